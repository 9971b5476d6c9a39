"""Shell steps passing values along: $STEPLINE_OUTPUT out, $STEPLINE_IN_<STEP> in; runs every 15 minutes."""
from engine import job, shell

# Each step writes its result (here a path or a number) to the file named by $STEPLINE_OUTPUT;
# every step that waits on it (after=) receives that text as $STEPLINE_IN_<STEP NAME IN CAPITALS>.
fetch = shell("fetch", """
    set -euo pipefail
    dir="$STEPLINE_HOME/sample_data/shell_pipeline-run$STEPLINE_RUN_ID"
    mkdir -p "$dir"
    {
        printf 'id,sensor,reading\\n'
        for i in $(seq 1 "$STEPLINE_PARAM_LINES"); do printf '%d,sensor-%d,%d\\n' "$i" $((i % 7)) $((i * 37 % 101)); done
    } > "$dir/readings.csv"
    echo "fetched $dir/readings.csv"
    printf '%s' "$dir/readings.csv" > "$STEPLINE_OUTPUT"
""")

count = shell("count", """
    set -euo pipefail
    lines=$(wc -l < "$STEPLINE_IN_FETCH")
    echo "$STEPLINE_IN_FETCH has $lines lines"
    echo "$lines" > "$STEPLINE_OUTPUT"
""", after=["fetch"])

compress = shell("compress", """
    set -euo pipefail
    gzip -kf "$STEPLINE_IN_FETCH"
    ls -l "$STEPLINE_IN_FETCH" "$STEPLINE_IN_FETCH.gz"
    echo "$STEPLINE_IN_FETCH.gz" > "$STEPLINE_OUTPUT"
""", after=["fetch"])

checksum = shell("checksum", """
    set -euo pipefail
    sum=$(sha256sum "$STEPLINE_IN_COMPRESS" | cut -d' ' -f1)
    echo "$sum  $STEPLINE_IN_COMPRESS" | tee "$STEPLINE_IN_COMPRESS.sha256"
    echo "$sum" > "$STEPLINE_OUTPUT"
""", after=["compress"])

summary = shell("summary", """
    echo "lines:    $STEPLINE_IN_COUNT"
    echo "archive:  $STEPLINE_IN_COMPRESS"
    echo "sha256:   $STEPLINE_IN_CHECKSUM"
""", after=["count", "compress", "checksum"])

shell_pipeline = job("shell_pipeline", [fetch, count, compress, checksum, summary],
                     every="15m", params={"lines": "500"},
                     description="Generate a CSV, count its lines, gzip it and checksum the archive")
