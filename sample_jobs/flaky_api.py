"""Automatic retries: a step that fails twice with a realistic upstream error, then recovers (retries + backoff)."""
from engine import job, step


@step
def plan_requests(params):
    return [f"/v1/rates?day=2024-03-{day:02d}" for day in range(1, int(params.get("days", "5")) + 1)]


@step(retries=3, retry_delay=1, backoff=2, timeout=60)
def call_api(plan_requests, context):
    """Pretend to call a rate API that is overloaded for the first two attempts.

    Attempt 1 fails, the retry 1 s later fails again, the next one 2 s after that (backoff=2) succeeds.
    """
    print(f"attempt {context.attempt}: requesting {len(plan_requests)} pages")
    if context.attempt <= 2:
        raise ConnectionError("upstream API returned 503 Service Unavailable")
    rates = {path.rsplit("=", 1)[1]: round(1.08 + i * 0.002, 4) for i, path in enumerate(plan_requests)}
    print(f"got {len(rates)} rates")
    return rates


@step
def store_rates(call_api):
    for day, rate in sorted(call_api.items()):
        print(f"{day}  EUR/USD {rate}")
    return len(call_api)


flaky_api = job("flaky_api", [plan_requests, call_api, store_rates], params={"days": "5"},
                description="Fetch exchange rates from an API that answers 503 twice before it recovers")
