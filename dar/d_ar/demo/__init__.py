"""The D-AR demo (`dartrt train-demo-dar`, docs/d-ar.md): its tokenizer's encoder, the training recipe on the clock, and its
judge (the DAR demo's classifier, with per-group preview accuracy). See docs/d-ar.md."""
