"""What the analyst notebooks show: the campaign confirmation (R13) and the delivery report
(R14, R15) as frames, figures and short notes, plus :func:`run_report`, which executes the
report notebook with papermill and exports a standalone HTML file.

Notebooks call this package and nothing else needs it: it imports matplotlib, and papermill
and nbconvert only when a report is run. Phone numbers in every frame here are masked
(``090-****-5678``).
"""

from smsops.reports.campaign import Campaign, forecast_chart, ticket_forecast
from smsops.reports.common import KERNEL, NOTEBOOKS, ROWS, Note, ReportError, notebook_context
from smsops.reports.delivery import DeliveryReport
from smsops.reports.runner import execute, export_html, run_report

__all__ = [
    "KERNEL",
    "NOTEBOOKS",
    "ROWS",
    "Campaign",
    "DeliveryReport",
    "Note",
    "ReportError",
    "execute",
    "export_html",
    "forecast_chart",
    "notebook_context",
    "run_report",
    "ticket_forecast",
]
