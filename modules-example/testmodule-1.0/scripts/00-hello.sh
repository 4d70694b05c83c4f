#!/bin/bash
# Scripts run with bash inside the sandbox, in lexical order.
echo "Hello, disco"
