"""The retry demo: validation fails with a clear data error, and `stepline retry RUN` completes the same run."""
import random

from engine import job, shell, step


@step
def export_invoices():
    """The billing system's export; three of its invoices have negative totals."""
    rng = random.Random(2024)
    invoices = [{"id": n, "customer": f"C{rng.randrange(1000, 9999)}", "total": round(rng.uniform(20, 900), 2)}
                for n in range(1, 121)]
    for bad in (17, 42, 99):
        invoices[bad - 1]["total"] = -invoices[bad - 1]["total"]
    print(f"exported {len(invoices)} invoices")
    return invoices


@step
def fetch_vat_rates():
    return {"standard": 0.19, "reduced": 0.07}


@step(retries=0)
def validate(export_invoices, context):
    """Refuse to book invoices with negative totals.

    retries=0: a data error is for a human to look at, so the run fails and waits.
    In real life someone corrects the billing system (books the refunds as credit notes) and then
    runs `stepline retry RUN export_invoices`, which exports again and validates the new export (a
    plain `stepline retry RUN` would validate the stored, uncorrected one). To keep the demo free
    of edits, attempts after the first one treat negative totals as credit notes, as if that
    correction had happened.
    """
    negative = [i["id"] for i in export_invoices if i["total"] < 0]
    if negative and context.attempt == 1:
        ids = ", ".join(str(n) for n in negative)
        raise ValueError(f"{len(negative)} invoices have negative totals (ids {ids}); correct them in the "
                         f"billing system, then run `stepline retry {context.run_id} export_invoices`")
    invoices = [i for i in export_invoices if i["total"] >= 0]
    credit_notes = [{**i, "total": -i["total"]} for i in export_invoices if i["total"] < 0]
    print(f"attempt {context.attempt}: {len(invoices)} invoices valid, {len(credit_notes)} booked as credit notes")
    return {"invoices": invoices, "credit_notes": credit_notes}


@step
def book(validate, fetch_vat_rates):
    net = sum(i["total"] for i in validate["invoices"]) - sum(c["total"] for c in validate["credit_notes"])
    vat = round(net * fetch_vat_rates["standard"], 2)
    print(f"booked {len(validate['invoices'])} invoices: net {net:.2f}, VAT {vat:.2f}")
    return {"net": round(net, 2), "vat": vat}


notify = shell("notify", 'echo "invoices booked: $STEPLINE_IN_BOOK"', after=["book"])

validate_invoices = job("validate_invoices", [export_invoices, fetch_vat_rates, validate, book, notify],
                        schedule="@daily", timezone="UTC",
                        description="Validate the billing export before booking it (fails once: retry demo)")
