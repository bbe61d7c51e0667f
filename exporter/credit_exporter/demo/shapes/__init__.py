"""Billing schemas that are not ours, for tests, benchmarks and the docs' examples.

Each module holds one shape modelled on a public product's documented schema:
its DDL, a writer that behaves the way that product writes (batches, two-step
rows, settlement by UPDATE), and the SQL its rows sum to. The reference schema
(``demo/migrations``) has sequence ids and ``timestamptz``; these have text or
uuid ids, naive ``timestamp`` or epoch-number times, float amounts and rows that
arrive or change after their time.
"""
