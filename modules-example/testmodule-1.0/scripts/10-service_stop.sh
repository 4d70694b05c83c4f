#!/bin/bash
# Service managers are shimmed: the stop is queued, and runs after the
# files have been merged, only when this module changed something (in
# noop disco says "would execute: …", or "would skip …" as here).
service postgresql stop
