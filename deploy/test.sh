#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The reference tools the tests compare against or use (samtools, Picard, minimap2, ...), and the
# test extras (pytest, hypothesis, protobuf, mappy, minibwa).
TEST_APT="samtools picard-tools minimap2 art-nextgen-simulation-tools bwa seqtk tabix"
# snap-aligner: tests/test_align_snap.py compares our snap backend with SNAP 2.0.2 on the same reads
TEST_APT="$TEST_APT snap-aligner"
# a throwaway Ceph (mon, OSD, radosgw; deploy/ceph.sh) for the ceph:// and s3:// store tests
TEST_APT="$TEST_APT ceph-mon ceph-osd ceph-common radosgw python3-rados"
# the service's deployment checks: promtool (metrics and scrape config), systemd-analyze verify, openssl (test CAs)
TEST_APT="$TEST_APT prometheus systemd openssl"
# a real headless browser for the benchmark report test (tests/test_bench_report.py)
TEST_APT="$TEST_APT chromium"
bash deploy/setup.sh --extras test,mappy,minibwa --apt "$TEST_APT"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, say so.
if [ "$rc" -eq 5 ]; then
    echo "persona test: no test was collected" >&2
fi
exit "$rc"
