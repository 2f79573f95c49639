#!/usr/bin/env bash
# A tiny build script: what a CI job's script looks like to a backend.
set -e
echo "hello from the build script"
echo "language: ${BUILD_LANGUAGE:-unknown}"
