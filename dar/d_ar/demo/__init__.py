"""The D-AR demo recipe (`dartrt train-demo-dar`, docs/d-ar.md): its tokenizer's encoder, the training on the
clock, and its judge (the DAR demo's classifier, with per-group preview accuracy)."""
