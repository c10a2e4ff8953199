"""pina_tff.reporting: results tables and figures from simulation run directories.

results.py  collect_runs, write_results_table (Table-1 style Markdown, mean ± std over
            seeds, achieved ε, grid.json section; per-run CSV), best_baseline
plots.py    accuracy / clustering / normality figures, make_all_plots
report.py   build_report(grid_dir, out_dir): both of the above in one call
"""
