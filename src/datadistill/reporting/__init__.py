"""Reports: a run's report.md and the comparison report (markdown, HTML, figures) of bench and run directories."""
