import csv
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Item:
    sku: str
    name: str
    price: float
    quantity: int


def load_items(path):
    items = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            items.append(Item(row["sku"], row["name"], float(row["price"]), int(row["quantity"])))
    return items


def total_value(items):
    return sum(item.price * item.quantity for item in items)


def low_stock(items, threshold=5):
    return [item for item in items if item.quantity < threshold]


def by_price(items, descending=False):
    return sorted(items, key=lambda item: item.price, reverse=descending)


def find(items, sku):
    for item in items:
        if item.sku == sku:
            return item
    return None


def restock(items, sku, amount):
    item = find(items, sku)
    if item is None:
        raise KeyError(sku)
    item.quantity += amount
    return item


def save_report(items, path):
    report = {
        "total_value": total_value(items),
        "low_stock": [item.sku for item in low_stock(items)],
        "count": len(items),
    }
    Path(path).write_text(json.dumps(report, indent=2))
    return report


def main():
    items = load_items("inventory.csv")
    save_report(items, "report.json")
