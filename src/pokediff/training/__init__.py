"""Training the U-Net: the loop and its parts. Import the module you need; nothing is imported here.

    loop.py           train(images, model_cfg, diffusion_cfg, train_cfg, out_dir): the training loop
    step.py           draw_batch + TrainStep (loss, backward, clip, AdamW, LR, EMA): one optimizer step
    ema.py            EMA of the weights (what sampling uses)
    lr.py             warm-up + cosine learning-rate schedule
    distributed.py    torchrun / DDP set-up with an exact single-process equivalent
    periodic_eval.py  the in-training FID (EMA samples scored every train.eval_every steps)
    memory_estimate.py  will the run fit in memory? (checked before anything is allocated)

Checkpoints and model files (save, load, resume state, fingerprint) are pokediff.checkpoint.
"""
