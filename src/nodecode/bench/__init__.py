"""Benchmarks: multiply-accumulate counts (Table 1) and, later, speed (Fig. 12)."""
from nodecode.bench.flops import count_macs, format_table, model_gmacs, table1_rows

__all__ = ["count_macs", "format_table", "model_gmacs", "table1_rows"]
