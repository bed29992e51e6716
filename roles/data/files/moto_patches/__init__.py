"""The DynamoDB emulator's patches of moto, one module each (dynamodb_emulator.py installs
them and runs moto's server).

module                  what it fixes in moto                  its test (under tests/)
table_id                DescribeTable without TableId          unit/test_emulator_table_id.py
indexed_query           Query walking the whole table          unit/test_dynamodb_emulator.py
atomic_writes           concurrent writes racing               integration/
                                                                 test_dynamodb_emulator_atomic.py
transact_writes         TransactWriteItems copying the tables  integration/
                                                                 test_dynamodb_emulator_transact.py
keep_alive              a new connection per call              integration/
                                                                 test_dynamodb_emulator_keepalive.py
fast_path               werkzeug, Flask and dispatch per call  integration/
                                                                 test_dynamodb_emulator_fastpath.py
sigv4_key               any signature accepted                 integration/
                                                                 test_dynamodb_emulator_auth.py
gc_pauses               full GC pauses over stored items       unit/test_emulator_gc_pauses.py
cloudwatch_percentiles  GetMetricData `pNN` answering 500      unit/test_emulator_cloudwatch.py

lock holds the one lock that atomic_writes and indexed_query share.
"""
