"""File names inside a CLIP checkpoint folder, defined once: curate.train writes them, curate.clip loads them."""

CONFIG_FILE = "open_clip_config.json"         # open_clip's hub format: {"model_cfg": ..., "preprocess_cfg": ...}
WEIGHTS_FILE = "open_clip_model.safetensors"  # the weights open_clip's local-dir: loader reads beside it
STATE_FILE = "train_state.pt"                 # optimizer, schedule, step, RNG (tensors only: weights_only load)
META_FILE = "train_meta.json"                 # written last: its presence marks a complete checkpoint
