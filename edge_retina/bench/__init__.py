"""Benchmarks of a bundle on this machine: latency per stage (``latency``) and accuracy parity against
a reference (``parity``), with the statistics they need (``metrics``). Runtime side: no torch; the
research-code baseline (``research``) imports torch and Pillow only when asked for.
"""
