"""Data pipeline of mae-face-jax: ABAW/Aff-Wild2 and image-folder readers, region synthesis,
Grain pipelines yielding numpy batches, TFDS ArrayRecord builds, and the procedural demo dataset.

Modules: abaw, folders, regions, transforms, datasets, tfds_build, demo_data (see their docstrings).
Nothing here imports the models; only ``datasets.host_shard`` touches jax.
"""
