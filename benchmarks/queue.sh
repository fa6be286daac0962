#!/usr/bin/env bash
# The measurements still to make (benchmarks/RESULTS.md, "Not measured yet"), in order. Every
# step resumes where it stopped, and a step already done only loads the model to find nothing
# left, so after an interruption (or on a new machine, with the committed run directories)
# this runs again as it is. Run it alone on the machine, in the background:
#
#   setsid nohup nice -n 10 benchmarks/queue.sh >> queue.log 2>&1 < /dev/null &
#
# A step that fails does not stop the ones after it.
cd "$(dirname "$0")/.."
benchmarks/strategies.sh more
benchmarks/strategies.sh fixes5
benchmarks/tiebreak.sh
benchmarks/strategies.sh spl300
