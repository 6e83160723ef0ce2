"""Running the report notebook with papermill and exporting standalone HTML."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from smsops.errors import NotFoundError, ReportError
from smsops.i18n import translate_markdown
from smsops.reports.common import KERNEL, NOTEBOOKS
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.settings import Settings

_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<style>
main { max-width: 1100px; margin: 0 auto; padding: 1em 2em; }
.jp-RenderedHTMLCommon table { font-size: 13px; }
.jp-OutputArea-output img { max-width: 100%; }
</style>{% endblock extra_css %}
"""


def execute(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | Path | None = None,
    timeout: float = 600,
) -> Any:
    """Run a notebook with papermill on the ``python3`` kernel, which jupyter_client starts
    with this very interpreter (so the kernel sees this smsops). Returns the executed
    notebook; a failing cell becomes a :class:`ReportError` naming the error."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    try:
        executed = pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters or {},
            kernel_name=KERNEL,
            progress_bar=False,
            cwd=str(cwd or Path.cwd()),
            execution_timeout=timeout,
        )
    except pm.PapermillExecutionError as exc:
        raise ReportError(
            f"{Path(notebook).name} stopped in cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
        ) from None
    except (CellTimeoutError, DeadKernelError) as exc:
        raise ReportError(f"{Path(notebook).name} did not finish: {exc}") from None
    # the markdown around the outputs in the language the kernel spoke (#15): the
    # notebook's `language` parameter, else this process's (the kernel inherits SMSOPS_LANG)
    language = (parameters or {}).get("language")
    translate_markdown(executed, language if isinstance(language, str) else None)
    import nbformat

    nbformat.write(executed, str(output))
    return executed


def export_html(notebook: Any, title: str) -> str:
    """A standalone HTML page of an executed notebook: outputs only, images inline."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook.metadata["title"] = title
    exporter = HTMLExporter(
        extra_loaders=[DictLoader({"smsops_report.html.j2": _TEMPLATE})],
        template_file="smsops_report.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(notebook)
    return str(body)


def run_report(
    delivery_id: int | None,
    html_path: str | Path,
    *,
    database_url: str | None = None,
    resend: bool = False,
    notebook_path: str | Path | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Execute ``notebooks/delivery_report.ipynb`` for ``delivery_id`` (None: the latest)
    and write it as one self-contained HTML file that can be mailed.

    The kernel inherits this process's ``SMSOPS_*`` environment and working directory; pass
    ``database_url`` only to override it (it is then written into the executed notebook).
    ``notebook_path`` keeps the executed notebook too."""
    source = NOTEBOOKS / "delivery_report.ipynb"
    if not source.exists():
        raise ReportError(f"the report notebook is missing: {source}")
    settings = Settings() if database_url is None else Settings(database_url=database_url)
    ctx = Context.open(settings)
    try:
        if delivery_id is None:
            latest = dl.list_deliveries(ctx, limit=1)
            if not latest:
                raise NotFoundError("no deliveries yet; nothing to report")
            delivery_id = latest[0].id
        dl.delivery_summary(ctx, delivery_id)  # an unknown id fails here, before papermill
    finally:
        ctx.close()
    parameters: dict[str, Any] = {"delivery_id": delivery_id, "resend": resend}
    if database_url is not None:
        parameters["database_url"] = database_url
    with tempfile.TemporaryDirectory(prefix="smsops-report-") as tmp:
        executed = execute(
            source, notebook_path or Path(tmp) / "report.ipynb", parameters, timeout=timeout
        )
    html = export_html(executed, f"smsops delivery {delivery_id}")
    target = Path(html_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return {
        "delivery_id": delivery_id,
        "html": str(target.resolve()),
        "bytes": len(html.encode("utf-8")),
        "images": html.count('src="data:image/png;base64,'),
    }
