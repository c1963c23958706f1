"""The benchmark suite: spreadcode against the compressors a user would pick instead.

Entry point: ``python bench/suite.py DATASET`` (see BENCHMARKS.md). Not part of the installed
package; faiss-cpu and matplotlib are needed here only.
"""
