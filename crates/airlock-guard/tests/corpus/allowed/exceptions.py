# Exceptions: custom types, chaining, messages.
class DataError(ValueError):
    def __init__(self, column, reason):
        super().__init__(f"{column}: {reason}")
        self.column = column


def parse(v):
    try:
        return float(v)
    except ValueError as e:
        raise DataError("price", "not a number") from e


errors = []
for raw in ["1.5", "x", "2"]:
    try:
        parse(raw)
    except DataError as e:
        errors.append((type(e).__name__, e.column, str(e), type(e.__cause__).__name__ if e.__cause__ else None))
print(errors)
