"""The one stage numbering of a run (cohorts, seeds, metrics rows, checkpoints).

A run goes through the stages in order; a checkpoint's phase is the stage it resumes
in, or `DONE`. Stage 0 is the head warm-up, stage 1 the sketches + k-means start of
the cluster models, stage 2 the clustered (or baseline) rounds. metrics.csv holds rows
of stages 0 and 2; the accountant names the stages by `KEYS`.
"""

STAGE0, STAGE1, STAGE2, DONE = 0, 1, 2, 3
#: The accountant's (and the execution log's) name of each stage.
KEYS = {STAGE0: "stage0", STAGE1: "stage1", STAGE2: "stage2"}
