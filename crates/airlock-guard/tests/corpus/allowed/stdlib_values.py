# Dates, statistics, decimals, JSON and regular expressions (datetime.strptime imports
# its helper module lazily from C: the runtime layer must let it).
import datetime as dt
import json
import re
import statistics
from decimal import Decimal, getcontext
from fractions import Fraction

getcontext().prec = 10
day = dt.datetime.strptime("2024-02-29 13:45", "%Y-%m-%d %H:%M")
later = day + dt.timedelta(days=1, hours=2)
data = [2.5, 3.1, 4.7, 4.7, 5.0]
stats = {"mean": statistics.mean(data), "median": statistics.median(data), "mode": statistics.mode(data)}
money = Decimal("10") / Decimal("3")
ratio = Fraction(3, 4) + Fraction(1, 6)
emails = re.findall(r"[\w.]+@[\w.]+", "write to a.b@example.org or c@d.io")
blob = json.dumps({"when": later.isoformat(), "stats": stats, "ratio": str(ratio)}, sort_keys=True)
print(json.loads(blob)["when"], money, emails, "ok".encode("utf-16")[:2])
