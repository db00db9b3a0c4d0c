#!/usr/bin/env bash
# A throwaway single-node Ceph for Persona's tests and demos: one mon, one OSD, cephx on, and a
# radosgw serving S3 on a loopback port. Plain processes (no systemd, no root-owned paths outside
# DIR); everything it makes lives under DIR.
#
#   bash deploy/ceph.sh start  [DIR]   # create (first time) and start; prints how long it took
#   bash deploy/ceph.sh stop   [DIR]   # stop the daemons started from DIR (by their pid files)
#   bash deploy/ceph.sh status [DIR]   # ceph -s, and whether radosgw answers
#   bash deploy/ceph.sh env    [DIR]   # shell exports for clients (eval "$(deploy/ceph.sh env DIR)")
#   bash deploy/ceph.sh purge  [DIR]   # stop, then delete DIR
#
# DIR defaults to $PERSONA_CEPH_DIR, else /tmp/persona-ceph. Knobs (environment, first start):
#   CEPH_PORT=40200         mon v2 port (v1 = CEPH_PORT+1); distinct ports for parallel clusters
#   RGW_PORT=40280          radosgw S3 port on 127.0.0.1; WITH_RGW=0 starts no radosgw
#   OBJECTSTORE=memstore    memstore (RAM; data gone on stop) | bluestore (a sparse file in DIR)
#   MEMSTORE_BYTES=8G       memstore size (statfs only: RAM is used as objects are written)
#   BLUESTORE_BYTES=10G     bluestore block file size (sparse)
#   POOLS=persona           RADOS pools to create (size 1, 8 PGs)
#
# What clients get (see `env`): DIR/ceph.conf; the admin keyring DIR/keyring (client.admin);
# a non-admin user client.persona, allowed only on POOLS, in DIR/client.persona.keyring; and an S3
# user "persona" whose keys are in DIR/s3.env. Persona URLs, for example:
#   ceph://persona/myns?conf=DIR/ceph.conf&id=persona&keyring=DIR/client.persona.keyring
#   s3://persona-bucket/prefix?endpoint=http://127.0.0.1:40280   (with DIR/s3.env exported)
#
# Needs the Debian packages ceph-mon ceph-osd ceph-common radosgw (python3-rados for Persona).
set -euo pipefail

cmd=${1:-}
DIR=${2:-${PERSONA_CEPH_DIR:-/tmp/persona-ceph}}
case $cmd in start|stop|status|env|purge) ;; *) sed -n 2,30p "$0"; exit 2 ;; esac
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
CONF=$DIR/ceph.conf
PORT=${CEPH_PORT:-40200}
RGW_PORT_SET=${RGW_PORT:-}
RGW_PORT=${RGW_PORT:-40280}
WITH_RGW=${WITH_RGW:-1}
OBJECTSTORE=${OBJECTSTORE:-memstore}
POOLS=${POOLS:-persona}
export CEPH_CONF=$CONF

need() {
  local missing=() b
  for b in "$@"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "deploy/ceph.sh: missing ${missing[*]}; install: apt-get install -y ceph-mon ceph-osd ceph-common radosgw python3-rados" >&2
    exit 3
  fi
}

write_conf() {
  local fsid=$1
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$PORT,v1:127.0.0.1:$((PORT + 1))]
public_addr = 127.0.0.1
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
keyring = $DIR/keyring
run_dir = $DIR/run
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
log_file = $DIR/log/\$name.log
log_to_stderr = false
err_to_stderr = true
crash_dir = $DIR/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
osd_max_object_size = 134217728

[mon]
mon_data = $DIR/mon/\$cluster-\$id
mon_cluster_log_file = $DIR/log/cluster.log
; no mgr is run: no HEALTH_ERR for its absence
mon_mgr_mkfs_grace = 315360000

[osd]
osd_data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
osd_objectstore = $OBJECTSTORE
memstore_device_bytes = $(numfmt --from=iec "${MEMSTORE_BYTES:-8G}")
bluestore_block_path = $DIR/osd/\$cluster-\$id.block
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "${BLUESTORE_BYTES:-10G}")
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 1073741824
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[client.rgw.a]
keyring = $DIR/rgw.keyring
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw_data = $DIR/rgw
rgw_thread_pool_size = 32
rgw_dns_name = 127.0.0.1
EOF
}

wait_for() { # wait_for SECONDS CMD...
  local t=$1 i; shift
  for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "deploy/ceph.sh: timeout waiting for: $*" >&2
  return 1
}

alive() { # running and not a zombie
  [ -r "/proc/$1/stat" ] && ! awk '{exit !($3 == "Z")}' "/proc/$1/stat" 2>/dev/null
}

conf_rgw_port() { sed -n 's/^rgw_frontends = beast endpoint=127.0.0.1:\([0-9]*\)$/\1/p' "$CONF"; }

rgw_up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$RGW_PORT/"; }

start() {
  need ceph-mon ceph-osd ceph ceph-authtool monmaptool uuidgen numfmt
  [ "$WITH_RGW" = 1 ] && need radosgw radosgw-admin curl
  local t0; t0=$(date +%s.%N)
  if [ -f "$CONF" ] && grep -q '^osd_objectstore = memstore' "$CONF"; then
    # memstore keeps nothing across an OSD restart: make a fresh cluster (on the same ports)
    [ -n "${CEPH_PORT:-}" ] || PORT=$(sed -n 's/^mon_host = \[v2:127.0.0.1:\([0-9]*\),.*/\1/p' "$CONF")
    [ -n "${RGW_PORT_SET:-}" ] || RGW_PORT=$(conf_rgw_port)
    stop >/dev/null
    rm -rf "${DIR:?}"/{run,log,crash,mon,osd,rgw,keyring,*.keyring,monmap,ceph.conf,s3.env}
  fi
  local NEW=0
  if [ ! -f "$CONF" ]; then
    NEW=1
    local fsid; fsid=$(uuidgen)
    mkdir -p "$DIR"/{run,log,crash,mon/ceph-a,osd/ceph-0,rgw}
    write_conf "$fsid"
    # the mon's key and the admin's; the mon imports both into its auth database at mkfs
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$DIR/keyring" --gen-key -n client.admin \
      --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$PORT,v1:127.0.0.1:$((PORT + 1))]" \
      "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
  fi
  mkdir -p "$DIR"/{run,log,crash}
  # a restart keeps the object store and ports it was made with
  [ "$NEW" = 1 ] || { RGW_PORT=$(conf_rgw_port); OBJECTSTORE=$(sed -n 's/^osd_objectstore = //p' "$CONF"); }
  ceph-mon -c "$CONF" -i a 2>>"$DIR/log/mon.a.stderr"
  wait_for 30 timeout 5 ceph -c "$CONF" mon stat
  if [ "$NEW" = 1 ]; then
    # osd.0 with its own cephx key, registered in the same step that allocates its id
    local uuid key; uuid=$(uuidgen); key=$(ceph-authtool --gen-print-key)
    echo "{\"cephx_secret\": \"$key\"}" | ceph -c "$CONF" osd new "$uuid" -i - >/dev/null
    ceph-authtool --create-keyring "$DIR/osd/ceph-0/keyring" -n osd.0 --add-key "$key" >/dev/null
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$DIR/log/osd-mkfs.log" 2>&1 ||
      { echo "osd mkfs failed, see $DIR/log/osd-mkfs.log" >&2; tail -5 "$DIR/log/osd-mkfs.log" >&2; return 1; }
  fi
  ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd.0.stderr"
  wait_for 60 sh -c "ceph -c '$CONF' osd stat -f json | grep -q '\"num_up_osds\":1'"
  if [ "$NEW" = 1 ]; then
    local p caps=""
    for p in $POOLS; do
      ceph -c "$CONF" osd pool create "$p" 8 8 >/dev/null 2>&1
      ceph -c "$CONF" osd pool application enable "$p" rados >/dev/null 2>&1 || true
      caps="${caps:+$caps, }allow rwx pool=$p"
    done
    # a non-admin client that may use only POOLS (what a production deployment would hand out)
    ceph -c "$CONF" auth get-or-create client.persona mon 'allow r' osd "$caps" \
      -o "$DIR/client.persona.keyring" >/dev/null
  fi
  local p1=${POOLS%% *}
  wait_for 60 sh -c "echo ping | rados -c '$CONF' -p $p1 put __ready - && rados -c '$CONF' -p $p1 rm __ready"
  local t1; t1=$(date +%s.%N)
  local msg="mon+osd up in $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
  if [ "$WITH_RGW" = 1 ]; then
    if [ "$NEW" = 1 ]; then
      ceph -c "$CONF" auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' \
        -o "$DIR/rgw.keyring" >/dev/null
    fi
    mkdir -p "$DIR/rgw"
    radosgw -c "$CONF" -n client.rgw.a 2>>"$DIR/log/rgw.a.stderr"
    wait_for 90 rgw_up || { tail -5 "$DIR/log/client.rgw.a.log" >&2; return 1; }
    if [ ! -f "$DIR/s3.env" ]; then
      local ak sk
      ak=$(tr -dc 'A-Z0-9' </dev/urandom | head -c 20 || true)
      sk=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 40 || true)
      radosgw-admin -c "$CONF" -n client.admin user create --uid=persona --display-name="Persona tests" \
        --access-key="$ak" --secret-key="$sk" >/dev/null 2>>"$DIR/log/radosgw-admin.stderr"
      printf 'export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\nexport AWS_DEFAULT_REGION=us-east-1\nexport PERSONA_S3_ENDPOINT=http://127.0.0.1:%s\n' \
        "$ak" "$sk" "$RGW_PORT" >"$DIR/s3.env"
    fi
    local t2; t2=$(date +%s.%N)
    msg="$msg, radosgw on 127.0.0.1:$RGW_PORT up $(awk "BEGIN{printf \"%.1f\", $t2 - $t1}") s later"
  fi
  echo "persona ceph ($OBJECTSTORE, cephx) in $DIR: $msg"
}

stop() {
  # rgw and OSD first (an OSD whose mon is gone lingers), then the mon. radosgw keeps no state of
  # its own (every acknowledged write is in RADOS) and memstore has nothing to persist: both are
  # SIGKILLed (radosgw's graceful shutdown takes ~10 s); the others get SIGTERM (10 s, then KILL).
  local sig=TERM n=0 group g f pid i
  grep -q '^osd_objectstore = memstore' "$CONF" 2>/dev/null && sig=KILL
  for group in "client.rgw osd" "mon"; do
    local pids=()
    for g in $group; do
      for f in "$DIR"/run/"$g".*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        if [ -n "$pid" ] && alive "$pid"; then
          case $g in osd) kill -"$sig" "$pid" ;; client.rgw) kill -KILL "$pid" ;; *) kill -TERM "$pid" ;; esac
          pids+=("$pid")
        fi
        rm -f "$f"
      done
    done
    for pid in "${pids[@]}"; do
      for ((i = 0; i < 200; i++)); do alive "$pid" || break; sleep 0.05; done
      if alive "$pid"; then kill -9 "$pid"; fi
    done
    n=$((n + ${#pids[@]}))
  done
  echo "stopped $n daemon(s) of $DIR"
}

status() {
  timeout 10 ceph -c "$CONF" -s
  if grep -q '^\[client.rgw.a\]' "$CONF" 2>/dev/null; then
    RGW_PORT=$(conf_rgw_port)
    if rgw_up; then echo "radosgw: up on 127.0.0.1:$RGW_PORT"; else echo "radosgw: down"; return 1; fi
  fi
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env)
    [ -f "$CONF" ] || { echo "deploy/ceph.sh: no cluster in $DIR (start it first)" >&2; exit 1; }
    echo "export CEPH_CONF=$CONF"
    echo "export PERSONA_CEPH_DIR=$DIR"
    [ -f "$DIR/s3.env" ] && cat "$DIR/s3.env"
    ;;
  purge) stop; rm -rf "${DIR:?}" ;;
esac
