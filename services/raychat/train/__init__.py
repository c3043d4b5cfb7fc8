"""Training jobs. The loops (pretrain, sft, grpo) are plain PyTorch functions `train(config, ctx)`; `ray_job`
is the only module here that imports Ray: it runs a loop under Ray Train's TorchTrainer."""
