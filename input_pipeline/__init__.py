"""Data pipeline of mae-face-jax: files on disk -> numpy batches (uint8 images). Imports no model
code; only ``datasets.host_shard`` touches jax (process index/count).

Modules, one idea each (signatures in their docstrings):
    abaw        ABAW/Aff-Wild2 layout: load_split, load_test_set, load_frames, read_annotation, CLASSES
    folders     plain image folders: unlabeled_images, labeled_images
    regions     region boxes (landmarks or aligned template) and synthesize_regions; CLI writing
                <root>/cropped_aligned_<variant>/
    transforms  the host's per-record work: Decode (image at the stored size, region boxes),
                SelectKeys, collate; augmentation is the device's (mae_face_jax.augment)
    skips       unreadable images: dropped before batching, logged once, counted per epoch
    datasets    pretrain_dataset, finetune_dataset, eval_dataset, paired_dataset -> grain.IterDataset
    tfds_build  TFDS ArrayRecord builds and read-back as a grain source
    demo_data   ensure_demo_data(root) -> root: the procedural demo face videos in the ABAW layout
"""
