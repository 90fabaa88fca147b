"""Knowledge distillation as a training objective on the task axis (`train.distill`): a student of
any task and method learns the output distribution of a teacher (a finished run or a fine-tuned
checkpoint) besides, or instead of, the labels. teacher.py loads and checks the teacher, cache.py
keeps its logits in the run directory, loss.py is the objective, run.py ties them into a run."""
