"""Parallel fan-out and fan-in, steps made by a helper function, and a step timeout."""
from engine import job, step

REGIONS = ("emea", "americas", "apac")


@step
def split():
    """Orders per region; the region steps below run in parallel on this output."""
    return {region: [round(10 + 3.5 * i * (n + 1), 2) for i in range(50)] for n, region in enumerate(REGIONS)}


def region_total(region):
    """A step named total_<region> that sums one region's share of split()'s output."""
    @step(name=f"total_{region}", timeout=30)
    def total(split):
        amount = round(sum(split[region]), 2)
        print(f"{region}: {len(split[region])} orders, {amount:.2f}")
        return amount
    return total


totals = [region_total(region) for region in REGIONS]


@step
def merge(total_emea, total_americas, total_apac):
    """Fan-in: waits on the three region steps and receives their outputs by parameter name."""
    grand = round(total_emea + total_americas + total_apac, 2)
    print(f"grand total {grand:.2f}")
    return grand


fan_out = job("fan_out", [split, *totals, merge],
              description="Split orders by region, sum the regions in parallel, merge")
