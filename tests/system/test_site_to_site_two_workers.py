#!/usr/bin/python3
"""The site-to-site system test with two worker lcores per gateway: af_packet spreads frames over two
queues (kernel fanout), each worker polls one, inbound SAs are owned by one worker (SPI % workers) and
packets for the other worker's SAs are handed over through its ring. Same checks, same oracles."""
import os
import runpy
import sys

os.environ["ESPRESSO_WORKERS"] = "2"
sys.argv[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_site_to_site.py")
runpy.run_path(sys.argv[0], run_name="__main__")
