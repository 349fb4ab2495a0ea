"""The bundled demo's data and judge: procedural shapes, a shape classifier, and image-quality metrics.

The demo model must be really trained yet ship without a dataset, so its data is rendered on the fly from
seeds, and the quality of what it generates is measured by a classifier trained on the same renderer.
"""
