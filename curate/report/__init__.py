"""Run report: statistics (stats) -> figures (matplotlib) -> report.html (html); the names other modules use."""
from curate.manifest import read_manifest
from curate.report.html import REPORT_NAME, build_report, render_report
from curate.report.stats import (FUNNEL_ORDER, PLOT_BARS, LedgerStats, effective_threshold, funnel, funnel_problems,
                                 manifest_from_ledger, reason_group, reason_status, scan_ledger, summary_table)

__all__ = ["FUNNEL_ORDER", "PLOT_BARS", "REPORT_NAME", "LedgerStats", "build_report", "effective_threshold", "funnel",
           "funnel_problems", "manifest_from_ledger", "read_manifest", "reason_group", "reason_status",
           "render_report", "scan_ledger", "summary_table"]
