"""TFF learning pieces of PINA: client work, DP aggregators (central, distributed, C-slot), the normality finalizer, the composed learning process, stage-1 sketches, and the per-method specs."""
