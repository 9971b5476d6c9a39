"""A long step that prints progress lines for about 25 seconds: watch it with `stepline logs RUN --follow`."""
import time

from engine import job, shell, step

SECTIONS = ["revenue", "refunds", "churn", "cohorts", "inventory", "shipping", "support", "forecast"]


@step
def collect(params):
    return {"seconds": float(params.get("seconds", "25")), "sections": SECTIONS}


@step(timeout=120)
def build_report(collect):
    """Work through the sections, printing a progress line every quarter of a second.

    print() is line-buffered in a step, so each line reaches the log (and the console) at once.
    """
    interval = 0.25
    ticks = max(1, round(collect["seconds"] / interval))
    for tick in range(1, ticks + 1):
        section = collect["sections"][(tick - 1) * len(collect["sections"]) // ticks]
        print(f"[{tick:>3}/{ticks}] {tick * 100 // ticks:>3}%  crunching {section}")
        time.sleep(interval)
    return f"report built in {ticks} steps over {len(collect['sections'])} sections"


publish = shell("publish", 'echo "publishing: $STEPLINE_IN_BUILD_REPORT"', after=["build_report"])

long_report = job("long_report", [collect, build_report, publish], params={"seconds": "25"},
                  description="A ~25 s report that logs progress: the log-tailing demo")
