#!/bin/bash
# Service managers are shimmed: in noop this prints
# "warning: would execute: service postgresql stop"; in a live dance the
# command runs after the files have been merged.
service postgresql stop
