"""ETL: generate orders, clean them, load them into SQLite (pool "warehouse"), report; daily at 06:00 Berlin time."""
import random
import sqlite3
from datetime import date, timedelta

from engine import job, step

from _common import warehouse_path

COUNTRIES = ["de", "DE", " fr", "NL", "es ", "it", "xx"]   # messy on purpose: clean() normalises them
PRODUCTS = {"widget": 4.50, "gadget": 12.00, "gizmo": 7.25, "doohickey": 19.90}


@step
def generate(params):
    """Orders as an upstream export would hand them over: a few hundred rows, some of them invalid."""
    rng = random.Random(int(params.get("seed", "7")))
    day = date(2024, 3, 1)
    orders = []
    for order_id in range(1, int(params.get("rows", "300")) + 1):
        product = rng.choice(list(PRODUCTS))
        orders.append({
            "id": order_id,
            "day": (day + timedelta(days=rng.randrange(30))).isoformat(),
            "customer": rng.choice(["ACME GmbH", "  Globex ", "initech", "Umbrella", ""]),
            "country": rng.choice(COUNTRIES),
            "product": product,
            "quantity": rng.choice([1, 1, 2, 3, 5, 10, 0, -1]),
            "unit_price": PRODUCTS[product],
        })
    print(f"generated {len(orders)} orders (seed {params.get('seed', '7')})")
    return orders


@step
def clean(generate):
    """Drop rows without a customer, a known country or a positive quantity; normalise the rest."""
    kept, dropped = [], 0
    for order in generate:
        customer = order["customer"].strip()
        country = order["country"].strip().upper()
        if not customer or country == "XX" or order["quantity"] <= 0:
            dropped += 1
            continue
        kept.append({**order, "customer": customer.title(), "country": country,
                     "total": round(order["quantity"] * order["unit_price"], 2)})
    print(f"kept {len(kept)} orders, dropped {dropped} invalid ones")
    return {"orders": kept, "dropped": dropped}


@step(pool="warehouse", retries=2, retry_delay=5)
def load(clean, context):
    """Upsert the clean orders into the orders table of the sample warehouse."""
    path = warehouse_path(context)
    with sqlite3.connect(path) as db:
        db.execute("""CREATE TABLE IF NOT EXISTS orders (
                          id INTEGER PRIMARY KEY, day TEXT, customer TEXT, country TEXT,
                          product TEXT, quantity INTEGER, total REAL, run_id INTEGER)""")
        db.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(o["id"], o["day"], o["customer"], o["country"], o["product"], o["quantity"],
                         o["total"], context.run_id) for o in clean["orders"]])
    print(f"loaded {len(clean['orders'])} rows into {path}")
    return {"database": path, "table": "orders", "rows": len(clean["orders"])}


@step
def report(load, context):
    """Print revenue per country of the rows this run loaded."""
    with sqlite3.connect(load["database"]) as db:
        rows = db.execute("SELECT country, COUNT(*), ROUND(SUM(total), 2) FROM orders WHERE run_id = ? "
                          "GROUP BY country ORDER BY 3 DESC", (context.run_id,)).fetchall()
    print(f"{'country':<8}{'orders':>8}{'revenue':>12}")
    for country, count, revenue in rows:
        print(f"{country:<8}{count:>8}{revenue:>12.2f}")
    total = sum(r[2] for r in rows)
    print(f"{'total':<8}{sum(r[1] for r in rows):>8}{total:>12.2f}")
    return f"{load['rows']} orders loaded, revenue {total:.2f}"


etl_orders = job("etl_orders", [generate, clean, load, report],
                 schedule="0 6 * * *", timezone="Europe/Berlin",
                 params={"seed": "7", "rows": "300"},
                 description="Generate, clean and load orders into SQLite, then report revenue per country")
