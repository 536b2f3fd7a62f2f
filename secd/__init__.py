"""secd: the `secd` command, and the library researchers import in their jobs.

import secd

@secd.cache
def load_cohort(year): ...

table.to_csv(secd.output_path() / "table.csv")
"""

from secd.cache import cache, output_path

__all__ = ["cache", "output_path"]
