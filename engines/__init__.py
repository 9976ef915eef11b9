"""
engines/ — RTT inside an existing RL engine, for runs that outgrow one process.

  trl_rtt.py    RTTGRPOTrainer: TRL's GRPOTrainer plus the token term, built on normalize.py (one recipe with
                train.py); RubricReward, the judges' verdicts as a TRL reward. Copies out with the concept files.
  train_trl.py  train.py's presets and flags run by that trainer: one process, or many with `accelerate launch`
  accelerate/   accelerate configs: 8 GPUs with DeepSpeed ZeRO-3 or FSDP

Layer 6 of the reading guide (README): trl_rtt.py imports only the concept files; train_trl.py is an entry point.
"""
