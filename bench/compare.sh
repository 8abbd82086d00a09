#!/usr/bin/env bash
# bench/compare.sh: kura vs restic vs borg, side by side, in one run, with `tar | zstd` as a
# reference for the full backup.
#
# Builds a dataset:
#   files/    a copy of the data set: DIR of --data DIR (or DATA_DIR), else SRC_DIR
#             (default /usr/share: tens of thousands of small files)
#   disk.img  an ext4 image of IMAGE_SIZE made with `mkfs.ext4 -d`, holding a copy of
#             /usr/bin and /usr/lib/x86_64-linux-gnu (capped) and RANDOM_MB MiB of
#             deterministic random data (left out with --no-image: then only files/ is used)
# then, RUNS times, with fresh repositories and a fresh copy of the dataset each run:
#   full         back up files/ and disk.img (two commands per tool); also time the reference
#                `tar -C DATA -cf - files | zstd -3 -T$(nproc) >/dev/null` (and the same for
#                disk.img) as tool "tarzstd", full phase only
#   incremental  change ~1% of the data (the same bytes for every tool), back up both again
#   restore      restore the latest snapshot of both into empty directories, then verify
# Each command is timed with /usr/bin/time (wall seconds, peak RSS). A phase's time is the
# sum of its commands (files, image), its peak RSS the largest. The report gives per tool and
# phase the median over runs, per-command medians, the repository size after the incremental
# phase, and kura's ratio to restic, to borg and (full backup) to tar|zstd.
#
# Usage (run as root: it drops the page cache before every timed command, and apt-get
# installs missing tools):
#   bash bench/compare.sh [--data DIR] [--no-image] [--runs N] [-h|--help]
#   bash bench/compare.sh                                  # full size, cold cache
#   bash bench/compare.sh --data /srv/photos --no-image    # your own data, files only
#   SRC_DIR=/usr/share/doc IMAGE_SIZE=256M RANDOM_MB=32 RUNS=1 bash bench/compare.sh   # smoke test
#
# Options (each has an environment equivalent; options win):
#   --data DIR  copy DIR as files/ instead of SRC_DIR            (env DATA_DIR)
#   --no-image  no disk.img: only files/ is backed up and restored (env NO_IMAGE=1)
#   --runs N    number of runs                                   (env RUNS)
#   -h, --help  print this text
#
# Knobs (environment):
#   BENCH_DIR   work directory, deleted and recreated          (default /tmp/kura-bench)
#   SRC_DIR     directory copied as files/ without --data      (default /usr/share)
#   DATA_DIR    same as --data DIR                             (default unset)
#   NO_IMAGE    1: same as --no-image                          (default 0)
#   IMAGE_SIZE  size of disk.img, as for mkfs.ext4 / numfmt    (default 2G)
#   RANDOM_MB   MiB of random data inside the image            (default 256)
#   BIN_CAP_MB  cap on the binaries copied into the image      (default min(1024, image/2) MiB)
#   RUNS        number of runs; medians are reported           (default 3)
#   CACHE       cold: sync and drop the page cache before each timed command (default; needs
#               a writable /proc/sys/vm/drop_caches, i.e. root: the script stops otherwise);
#               warm: read the command's inputs (data, repository) before it;
#               auto: cold if /proc/sys/vm/drop_caches is writable, else warm
#   VERIFY      all: check every tool's restore; kura: only kura's  (default all)
#   IMAGE_CHANGE fs: loop-mount the image and rewrite ~1% of its files (needs root);
#               scattered: overwrite 64 KiB pieces at spread-out offsets  (default fs)
#   KURA_BIN    kura binary to use; if unset, `cargo build --release -p kura-cli` is run
#
# Output: a plain table on stdout, $BENCH_DIR/results.md (Markdown with the machine, tool
# versions, dataset and settings) and $BENCH_DIR/raw.tsv (every measurement of every run).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
COMMAND_LINE="bash $0${*:+ $*}"

BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench}
SRC_DIR=${SRC_DIR:-/usr/share}
IMAGE_SIZE=${IMAGE_SIZE:-2G}
RANDOM_MB=${RANDOM_MB:-256}
RUNS=${RUNS:-3}
CACHE=${CACHE:-cold}
VERIFY=${VERIFY:-all}
DATA_DIR=${DATA_DIR:-}
NO_IMAGE=${NO_IMAGE:-0}
# How the incremental phase changes the image: "fs" = loop-mount it and rewrite files in place
# (how an image really changes: file data plus the inode/journal blocks ext4 touches);
# "scattered" = 64 KiB pieces at spread-out offsets (worst case for fixed-size chunks).
IMAGE_CHANGE=${IMAGE_CHANGE:-fs}
BIN_SOURCES=(/usr/bin /usr/lib/x86_64-linux-gnu)

export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

TOOLS=(kura restic borg)
PHASES=(full incremental restore)
TARGETS=(files image) # set to (files) by --no-image
# The reference: not a backup tool, timed in the full phase only.
REF=tarzstd
REF_LABEL='tar|zstd'

# The same passwords for every tool; borg must not ask anything.
export KURA_PASSWORD=kura-bench RESTIC_PASSWORD=kura-bench BORG_PASSPHRASE=kura-bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_DISPLAY_PASSPHRASE=no

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }

# The comment block at the top of this file.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

# Command-line options; they override the environment knobs.
parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --data)
                [ $# -ge 2 ] || die "--data needs a directory"
                DATA_DIR=$2
                shift 2 ;;
            --data=*) DATA_DIR=${1#--data=}; shift ;;
            --no-image) NO_IMAGE=1; shift ;;
            --runs)
                [ $# -ge 2 ] || die "--runs needs a number"
                RUNS=$2
                shift 2 ;;
            --runs=*) RUNS=${1#--runs=}; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
}

# ---------------------------------------------------------------------------------------
# Setup: packages, kura binary, settings
# ---------------------------------------------------------------------------------------

# Installs the Debian packages whose commands are missing.
install_deps() {
    local -A pkg_of=([restic]=restic [borg]=borgbackup [mkfs.ext4]=e2fsprogs [tune2fs]=e2fsprogs
        [jq]=jq [openssl]=openssl [/usr/bin/time]=time [cmp]=diffutils [diff]=diffutils
        [tar]=tar [zstd]=zstd)
    local cmd missing=()
    for cmd in "${!pkg_of[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

build_kura() {
    if [ -n "${KURA_BIN:-}" ]; then
        [ -x "$KURA_BIN" ] || die "KURA_BIN=$KURA_BIN is not executable"
    else
        log "building kura (cargo build --release -p kura-cli)"
        (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
        KURA_BIN=$REPO_ROOT/target/release/kura
    fi
    KURA_BIN=$(readlink -f "$KURA_BIN")
}

choose_cache_policy() {
    case $CACHE in
        auto)
            if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then CACHE=cold; else CACHE=warm; fi ;;
        cold)
            (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null \
                || die "CACHE=cold (the default) needs to drop the page cache, but /proc/sys/vm/drop_caches is not writable: run as root (sudo bash bench/compare.sh ...), or pass CACHE=warm to time with a warm page cache instead" ;;
        warm) ;;
        *) die "CACHE must be auto, cold or warm" ;;
    esac
    if [ "$CACHE" = cold ]; then
        CACHE_DESC="cold: sync and drop the page cache (echo 3 > /proc/sys/vm/drop_caches) before every timed command"
    else
        CACHE_DESC="warm: read the command's inputs (dataset and repository) before every timed command (page cache could not be dropped, or CACHE=warm)"
    fi
}

# ---------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------

# prng BYTES KEYHEX: BYTES deterministic pseudo-random bytes (AES-128-CTR over zeros).
prng() {
    head -c "$1" /dev/zero | openssl enc -aes-128-ctr -nosalt -K "$2" -iv 00000000000000000000000000000000
}

# Copies files of BIN_SOURCES into $1 in path order, stopping at BIN_CAP_MB MiB.
stage_binaries() {
    local dest=$1 cap_bytes=$((BIN_CAP_MB * 1024 * 1024)) rel=()
    local src
    for src in "${BIN_SOURCES[@]}"; do
        [ -d "$src" ] && rel+=("${src#/}")
    done
    [ ${#rel[@]} -gt 0 ] || die "none of ${BIN_SOURCES[*]} exists"
    # Regular files and symlinks, each counted at its size rounded up to 4 KiB.
    (cd / && find "${rel[@]}" \( -type f -o -type l \) -printf '%s\t%p\n') | sort -t$'\t' -k2 \
        | awk -F'\t' -v cap="$cap_bytes" '
            # Reads to the end (no early exit: sort would die of SIGPIPE under pipefail).
            !full { sum += int(($1 + 4095) / 4096) * 4096; if (sum > cap) full = 1; else print $2 }' \
        >"$BENCH_DIR/staged.list"
    tar -C / -cf - --no-recursion -T "$BENCH_DIR/staged.list" | tar -C "$dest" -xf -
}

make_dataset() {
    local pristine=$BENCH_DIR/pristine staging=$BENCH_DIR/staging
    mkdir -p "$pristine/files" "$BENCH_DIR/mods"

    log "copying $FILES_SRC to files/"
    cp -a "$FILES_SRC/." "$pristine/files/"

    if [ "$WITH_IMAGE" = 1 ]; then
        log "making the ${IMAGE_SIZE} ext4 image (binaries up to ${BIN_CAP_MB} MiB + ${RANDOM_MB} MiB random)"
        mkdir -p "$staging"
        stage_binaries "$staging"
        prng $((RANDOM_MB * 1024 * 1024)) 6b7572612d62656e63682d72616e646f >"$staging/random.bin"
        mkfs.ext4 -q -F -d "$staging" "$pristine/disk.img" "$IMAGE_SIZE" >/dev/null \
            || die "mkfs.ext4 failed (does the staged data fit in IMAGE_SIZE=$IMAGE_SIZE? lower BIN_CAP_MB or RANDOM_MB)"
        rm -rf "$staging"
    fi

    # The incremental change: every 100th regular file (in path order) gets its first 4 KiB
    # overwritten; the image gets ~1% of its size overwritten in 64 KiB pieces at scattered
    # offsets. The new bytes are pseudo-random but fixed, so every run and tool sees the same.
    (cd "$pristine" && find files -type f -print0 | sort -z) >"$BENCH_DIR/mods/all-files"
    mapfile -d '' -t ALL_FILES <"$BENCH_DIR/mods/all-files"
    MOD_FILES=()
    local i
    for ((i = 50; i < ${#ALL_FILES[@]}; i += 100)); do MOD_FILES+=("${ALL_FILES[i]}"); done
    prng $(((${#MOD_FILES[@]} + 1) * 4096)) 6b7572612d62656e63682d66696c6573 >"$BENCH_DIR/mods/files.bin"

    # Facts for the report.
    DS_FILES_COUNT=$(find "$pristine/files" -type f | wc -l)
    DS_ENTRIES=$(find "$pristine/files" | wc -l)
    DS_FILES_BYTES=$(du -sb "$pristine/files" | cut -f1)

    [ "$WITH_IMAGE" = 1 ] || return 0
    IMAGE_BYTES=$(stat -c %s "$pristine/disk.img")
    IMG_BLOCKS=$((IMAGE_BYTES / 65536))
    IMG_PIECES=$((IMAGE_BYTES / 100 / 65536))
    [ "$IMG_PIECES" -ge 1 ] || IMG_PIECES=1
    prng $((IMG_PIECES * 65536)) 6b7572612d62656e63682d696d616765 >"$BENCH_DIR/mods/image.bin"
    # fs mode: the first 64 KiB of every 10th staged regular file, until ~1% of the image.
    IMG_MOD_FILES=()
    local budget=$((IMAGE_BYTES / 100)) rel sz
    i=0
    while IFS= read -r rel; do
        i=$((i + 1))
        [ $((i % 10)) -eq 5 ] || continue
        if [ ! -f "/$rel" ] || [ -L "/$rel" ]; then continue; fi
        sz=$(stat -c %s "/$rel")
        [ "$sz" -gt 0 ] || continue
        IMG_MOD_FILES+=("$rel")
        budget=$((budget - (sz < 65536 ? sz : 65536)))
        [ "$budget" -gt 0 ] || break
    done <"$BENCH_DIR/staged.list"
    IMG_MOD_BYTES=$((IMAGE_BYTES / 100 - budget))

    DS_IMG_ALLOC=$(($(stat -c '%b * %B' "$pristine/disk.img")))
    local blocks free bsize
    blocks=$(tune2fs -l "$pristine/disk.img" | awk -F: '/^Block count/ { print $2 + 0 }')
    free=$(tune2fs -l "$pristine/disk.img" | awk -F: '/^Free blocks/ { print $2 + 0 }')
    bsize=$(tune2fs -l "$pristine/disk.img" | awk -F: '/^Block size/ { print $2 + 0 }')
    DS_IMG_FSUSED=$(((blocks - free) * bsize))
    DS_STAGED_COUNT=$(wc -l <"$BENCH_DIR/staged.list")
}

# Fresh, unmodified copy of the dataset for one run.
fresh_data() {
    rm -rf "$DATA"
    mkdir -p "$DATA"
    cp -a "$BENCH_DIR/pristine/files" "$DATA/files"
    if [ "$WITH_IMAGE" = 1 ]; then
        cp --sparse=always "$BENCH_DIR/pristine/disk.img" "$DATA/disk.img"
    fi
}

image_change_desc() {
    if [ "$WITH_IMAGE" != 1 ]; then
        echo "no disk.img (--no-image)"
    elif [ "$IMAGE_CHANGE" = fs ]; then
        echo "disk.img loop-mounted and ${#IMG_MOD_FILES[@]} of its files (every 10th) rewritten in place, up to 64 KiB each ($((IMG_MOD_BYTES / 1024)) KiB of file data, ~1% of the image, plus the metadata and journal blocks ext4 writes)"
    else
        echo "$IMG_PIECES x 64 KiB of disk.img overwritten at scattered offsets ($((IMG_PIECES * 64)) KiB)"
    fi
}

# Applies the incremental change to $DATA (same bytes every run).
modify_data() {
    local k off
    for ((k = 0; k < ${#MOD_FILES[@]}; k++)); do
        dd if="$BENCH_DIR/mods/files.bin" of="$DATA/${MOD_FILES[k]}" bs=4096 skip="$k" count=1 \
            conv=notrunc status=none
    done
    [ "$WITH_IMAGE" = 1 ] || return 0
    if [ "$IMAGE_CHANGE" = fs ]; then
        local mnt=$BENCH_DIR/mnt f sz n
        mkdir -p "$mnt"
        mount -o loop "$DATA/disk.img" "$mnt" || die "IMAGE_CHANGE=fs needs loop mounts (run as root, or IMAGE_CHANGE=scattered)"
        k=0
        for f in "${IMG_MOD_FILES[@]}"; do
            sz=$(stat -c %s "$mnt/$f")
            n=$(((sz < 65536 ? sz : 65536) / 4096))
            [ "$n" -ge 1 ] || n=1
            dd if="$BENCH_DIR/mods/image.bin" of="$mnt/$f" bs=4096 skip=$(((k * 16) % (IMG_PIECES * 16))) \
                count="$n" conv=notrunc status=none
            k=$((k + 1))
        done
        umount "$mnt"
        return
    fi
    for ((k = 0; k < IMG_PIECES; k++)); do
        off=$(((k * 2654435761 + 12345) % IMG_BLOCKS)) # scattered, odd multiplier
        dd if="$BENCH_DIR/mods/image.bin" of="$DATA/disk.img" bs=65536 skip="$k" seek="$off" count=1 \
            conv=notrunc status=none
    done
}

# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------

# prepare_cache INPUTS REPO: gets the page cache into the state the policy asks for.
# cold: flush and drop everything. warm: flush, then read the command's inputs: the
# dataset and the repository (INPUTS=data+repo, backups) or the repository (INPUTS=repo).
prepare_cache() {
    sync
    if [ "$CACHE" = cold ]; then
        echo 3 >/proc/sys/vm/drop_caches
    else
        local paths=()
        [ -e "$2" ] && paths+=("$2") # the reference (tar|zstd) has no repository
        [ "$1" = data+repo ] && paths+=("$DATA")
        find "${paths[@]}" -type f -exec cat {} + >/dev/null 2>&1 || true
    fi
}

# timed RUN TOOL PHASE TARGET CWD INPUTS -- COMMAND...
# Runs COMMAND in CWD under /usr/bin/time (after prepare_cache INPUTS) and appends wall
# seconds and peak RSS to raw.tsv.
timed() {
    local run=$1 tool=$2 phase=$3 target=$4 cwd=$5 inputs=$6
    shift 7
    local tag="run$run-$tool-$phase-$target"
    local out=$LOGS/$tag.log tf=$LOGS/$tag.time
    prepare_cache "$inputs" "$(repo_of "$tool")"
    if ! (cd "$cwd" && /usr/bin/time -f '%e %M' -o "$tf" "$@") >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        cat "$tf" >&2 2>/dev/null || true
        die "$tool $phase $target failed: $*"
    fi
    local wall rss
    read -r wall rss < <(tail -n 1 "$tf")
    printf '%s\t%s\t%s\t%s\twall_s\t%s\n' "$run" "$tool" "$phase" "$target" "$wall" >>"$RAW"
    printf '%s\t%s\t%s\t%s\tmaxrss_kib\t%s\n' "$run" "$tool" "$phase" "$target" "$rss" >>"$RAW"
    log "  $tool $phase $target: ${wall}s, $((rss / 1024)) MiB"
}

# ---------------------------------------------------------------------------------------
# Tools. Each takes RUN; repositories live in $RUNDIR/repo-TOOL.
# ---------------------------------------------------------------------------------------

repo_of() { echo "$RUNDIR/repo-$1"; }

tool_init() {
    local tool=$1 repo
    repo=$(repo_of "$tool")
    case $tool in
        kura) "$KURA_BIN" -r "$repo" -q init ;;
        restic) restic -r "$repo" -q init ;;
        borg) borg init -e repokey-blake2 "$repo" ;;
    esac >"$LOGS/init-$tool.log" 2>&1 || { cat "$LOGS/init-$tool.log" >&2; die "$tool init failed"; }
}

# tool_backup RUN TOOL PHASE N: backs up files/ and disk.img (borg archives files-N, img-N).
# TOOL may be the reference tarzstd (full phase only): tar piped into zstd, output discarded.
tool_backup() {
    local run=$1 tool=$2 phase=$3 n=$4 repo
    repo=$(repo_of "$tool")
    local warm=data+repo
    case $tool in
        kura)
            timed "$run" kura "$phase" files "$DATA" "$warm" -- "$KURA_BIN" -r "$repo" backup -q "$DATA/files"
            [ "$WITH_IMAGE" = 1 ] || return 0
            timed "$run" kura "$phase" image "$DATA" "$warm" -- "$KURA_BIN" -r "$repo" backup -q --image "$DATA/disk.img"
            ;;
        restic)
            timed "$run" restic "$phase" files "$DATA" "$warm" -- restic -r "$repo" -q backup "$DATA/files"
            [ "$WITH_IMAGE" = 1 ] || return 0
            timed "$run" restic "$phase" image "$DATA" "$warm" -- restic -r "$repo" -q backup "$DATA/disk.img"
            ;;
        borg)
            # Relative paths from inside $DATA, so archives hold files/... and disk.img.
            timed "$run" borg "$phase" files "$DATA" "$warm" -- borg create "$repo::files-$n" files
            [ "$WITH_IMAGE" = 1 ] || return 0
            timed "$run" borg "$phase" image "$DATA" "$warm" -- borg create "$repo::img-$n" disk.img
            ;;
        "$REF")
            # The pipe runs under one bash, so /usr/bin/time sees the whole pipeline: wall time
            # until both end, peak RSS the largest of bash, tar and zstd. Output to a pipe, not
            # /dev/null: GNU tar skips reading file data when its archive is /dev/null.
            local zt
            zt="-T$(nproc)"
            # shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
            timed "$run" "$REF" "$phase" files "$DATA" "$warm" -- \
                bash -c 'set -o pipefail; tar -C "$1" -cf - files | zstd -q -3 "$2" >/dev/null' tarzstd "$DATA" "$zt"
            [ "$WITH_IMAGE" = 1 ] || return 0
            # shellcheck disable=SC2016
            timed "$run" "$REF" "$phase" image "$DATA" "$warm" -- \
                bash -c 'set -o pipefail; tar -C "$1" -cf - disk.img | zstd -q -3 "$2" >/dev/null' tarzstd "$DATA" "$zt"
            ;;
    esac
}

# tool_restore RUN TOOL: restores the latest files and image snapshots into
# $RUNDIR/restore-TOOL/{files,image}.
tool_restore() {
    local run=$1 tool=$2 repo
    repo=$(repo_of "$tool")
    local dst=$RUNDIR/restore-$tool
    mkdir -p "$dst/files" "$dst/image"
    case $tool in
        kura)
            # `restore latest` would pick whichever of the two was backed up last: look the
            # ids up by kind (untimed).
            local snaps fid iid
            snaps=$("$KURA_BIN" -r "$repo" --json snapshots)
            fid=$(jq -r '[.[] | select(.kind == "files")] | sort_by(.time) | last | .id' <<<"$snaps")
            iid=$(jq -r '[.[] | select(.kind == "image")] | sort_by(.time) | last | .id' <<<"$snaps")
            [[ $fid =~ ^[0-9a-f]+$ && ($WITH_IMAGE != 1 || $iid =~ ^[0-9a-f]+$) ]] || die "kura: snapshots not found: $snaps"
            timed "$run" kura restore files "$dst" repo -- "$KURA_BIN" -r "$repo" restore -q "$fid" --target "$dst/files"
            [ "$WITH_IMAGE" = 1 ] || return 0
            timed "$run" kura restore image "$dst" repo -- "$KURA_BIN" -r "$repo" restore -q "$iid" --target "$dst/image"
            ;;
        restic)
            # `latest` narrowed to the snapshots holding that path.
            timed "$run" restic restore files "$dst" repo -- restic -r "$repo" -q restore latest --path "$DATA/files" --target "$dst/files"
            [ "$WITH_IMAGE" = 1 ] || return 0
            timed "$run" restic restore image "$dst" repo -- restic -r "$repo" -q restore latest --path "$DATA/disk.img" --target "$dst/image"
            ;;
        borg)
            # borg extract writes into the current directory.
            timed "$run" borg restore files "$dst/files" repo -- borg extract "$repo::files-2"
            [ "$WITH_IMAGE" = 1 ] || return 0
            timed "$run" borg restore image "$dst/image" repo -- borg extract "$repo::img-2"
            ;;
    esac
}

# Where each tool put the restored tree and image.
restored_files() {
    case $1 in
        kura | restic) echo "$RUNDIR/restore-$1/files$DATA/files" ;;
        borg) echo "$RUNDIR/restore-$1/files/files" ;;
    esac
}
restored_image() {
    case $1 in
        kura | borg) echo "$RUNDIR/restore-$1/image/disk.img" ;;
        restic) echo "$RUNDIR/restore-$1/image$DATA/disk.img" ;;
    esac
}

verify_restore() {
    local tool=$1 rf ri
    rf=$(restored_files "$tool")
    ri=$(restored_image "$tool")
    [ -d "$rf" ] || die "$tool: restored tree not found at $rf"
    if ! diff -r --no-dereference "$DATA/files" "$rf" >"$LOGS/verify-$tool.diff" 2>&1; then
        head -n 20 "$LOGS/verify-$tool.diff" >&2
        die "$tool: restored files differ from the source (see $LOGS/verify-$tool.diff)"
    fi
    if [ "$WITH_IMAGE" = 1 ]; then
        [ -f "$ri" ] || die "$tool: restored image not found at $ri"
        cmp "$DATA/disk.img" "$ri" >/dev/null || die "$tool: restored image differs from disk.img"
    fi
    log "  $tool restore verified"
}

# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------

# The tools in rotation: run 1 kura restic borg, run 2 restic borg kura, ...
rotated_tools() {
    local run=$1 n=${#TOOLS[@]} i
    for ((i = 0; i < n; i++)); do echo "${TOOLS[((run - 1 + i) % n)]}"; done
}

one_run() {
    local run=$1 tool order
    RUNDIR=$BENCH_DIR/run$run
    LOGS=$RUNDIR/logs
    rm -rf "$RUNDIR"
    mkdir -p "$LOGS"
    # Fresh tool caches and config per run: nothing carries over between runs.
    export RESTIC_CACHE_DIR=$RUNDIR/restic-cache BORG_BASE_DIR=$RUNDIR/borg-home
    export XDG_CACHE_HOME=$RUNDIR/xdg-cache XDG_CONFIG_HOME=$RUNDIR/xdg-config
    mkdir -p "$XDG_CONFIG_HOME"

    log "run $run/$RUNS: fresh dataset copy and repositories"
    fresh_data
    mapfile -t order < <(rotated_tools "$run")
    for tool in "${TOOLS[@]}"; do tool_init "$tool"; done

    # The full phase also times the reference, at a position that moves with each run.
    local full_order=("${order[@]}") at=$(((run - 1) % (${#TOOLS[@]} + 1)))
    full_order=("${full_order[@]:0:at}" "$REF" "${full_order[@]:at}")
    log "run $run: full backup (order: ${full_order[*]})"
    for tool in "${full_order[@]}"; do tool_backup "$run" "$tool" full 1; done

    if [ "$WITH_IMAGE" = 1 ]; then
        log "run $run: changing ${#MOD_FILES[@]} files and the image ($IMAGE_CHANGE)"
    else
        log "run $run: changing ${#MOD_FILES[@]} files"
    fi
    modify_data

    log "run $run: incremental backup"
    for tool in "${order[@]}"; do tool_backup "$run" "$tool" incremental 2; done
    for tool in "${TOOLS[@]}"; do
        printf '%s\t%s\trepo\tall\tbytes\t%s\n' "$run" "$tool" "$(du -sb "$(repo_of "$tool")" | cut -f1)" >>"$RAW"
    done

    log "run $run: restore"
    for tool in "${order[@]}"; do
        tool_restore "$run" "$tool"
        # Untimed; the restored copy is deleted at once to bound disk use.
        if [ "$VERIFY" = all ] || [ "$tool" = kura ]; then verify_restore "$tool"; fi
        rm -rf "$RUNDIR/restore-$tool"
    done

    # Repositories and caches of this run are no longer needed; free the disk.
    rm -rf "$RUNDIR"/repo-* "$RUNDIR"/restic-cache "$RUNDIR"/borg-home "$RUNDIR"/xdg-cache
}

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

# Median of the numbers on stdin (mean of the middle two for an even count).
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Per-run phase values: wall = sum over the two commands, rss = max; then the median.
phase_wall() {
    awk -F'\t' -v t="$1" -v p="$2" '$2 == t && $3 == p && $5 == "wall_s" { s[$1] += $6 }
        END { for (r in s) print s[r] }' "$RAW" | median
}
phase_rss_mib() {
    awk -F'\t' -v t="$1" -v p="$2" '$2 == t && $3 == p && $5 == "maxrss_kib" { if ($6 > m[$1]) m[$1] = $6 }
        END { for (r in m) print m[r] / 1024 }' "$RAW" | median
}
repo_mib() {
    awk -F'\t' -v t="$1" '$2 == t && $3 == "repo" { print $6 / 1048576 }' "$RAW" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; }
# target_check RATIO LIMIT -> "met" / "MISSED"
target_check() { awk -v r="$1" -v l="$2" 'BEGIN { if (r == "n/a" || r == "") print "n/a"; else print (r <= l ? "met" : "MISSED") }'; }
# label TOOL: the name shown in tables.
label() { if [ "$1" = "$REF" ]; then echo "$REF_LABEL"; else echo "$1"; fi; }
# md_label TOOL: the same inside a Markdown table, where a bare | would end the cell.
md_label() { label "$1" | sed 's/|/\\|/g'; }

# Per-command median over runs: cmd_wall TOOL PHASE TARGET, cmd_rss_mib TOOL PHASE TARGET.
cmd_wall() {
    awk -F'\t' -v t="$1" -v p="$2" -v g="$3" '$2 == t && $3 == p && $4 == g && $5 == "wall_s" { print $6 }' "$RAW" | median
}
cmd_rss_mib() {
    awk -F'\t' -v t="$1" -v p="$2" -v g="$3" '$2 == t && $3 == p && $4 == g && $5 == "maxrss_kib" { print $6 / 1024 }' "$RAW" | median
}

# The tools measured in PHASE: the reference is in the full phase only.
tools_of() {
    printf '%s\n' "${TOOLS[@]}"
    [ "$1" != full ] || echo "$REF"
}

report() {
    local tool phase target
    declare -gA WALL RSS REPO CWALL CRSS
    for phase in "${PHASES[@]}"; do
        for tool in $(tools_of "$phase"); do
            WALL[$tool.$phase]=$(phase_wall "$tool" "$phase")
            RSS[$tool.$phase]=$(phase_rss_mib "$tool" "$phase")
            for target in "${TARGETS[@]}"; do
                CWALL[$tool.$phase.$target]=$(cmd_wall "$tool" "$phase" "$target")
                CRSS[$tool.$phase.$target]=$(cmd_rss_mib "$tool" "$phase" "$target")
            done
        done
    done
    for tool in "${TOOLS[@]}"; do REPO[$tool]=$(repo_mib "$tool"); done
    # kura's targets against restic: wall-time ratio limits per phase; RSS <= restic's.
    local -A WALL_TARGET=([full]=0.5 [incremental]=1.0 [restore]=0.4)
    # kura's target against the tar|zstd pipe (full phase).
    local REF_TARGET=0.9
    local ref_ratio
    ref_ratio=$(ratio "${WALL[kura.full]}" "${WALL[$REF.full]}")

    local ds_name ds_mib
    ds_name=$(basename "$(readlink -m "$FILES_SRC")")
    ds_mib=$(awk -v b="$DS_FILES_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
    local md=$BENCH_DIR/results.md
    {
        echo "# kura vs restic vs borg (and tar|zstd)"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- machine: kernel $(uname -r), $(nproc) CPUs ($(lscpu 2>/dev/null | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
        echo "- command: \`$RUN_ENV $COMMAND_LINE\`"
        echo "- runs: $RUNS (medians reported; tool order rotated each run)"
        echo "- cache policy: $CACHE_DESC"
        echo "- versions: $("$KURA_BIN" --version); $(restic version | head -n 1); $(borg --version); $(tar --version | head -n 1); zstd $(zstd --version | grep -o 'v[0-9][0-9.]*' | head -n 1)"
        echo "- settings (each tool's defaults): kura: zstd level 3, encrypted; restic: repository format v$RESTIC_REPO_VERSION, compression auto (zstd), encrypted; borg: \`borg init -e repokey-blake2\`, compression lz4"
        echo "- reference ($REF, full phase only): \`tar -C DATA -cf - files | zstd -3 -T$(nproc) >/dev/null\`$([ "$WITH_IMAGE" = 1 ] && echo " and the same for disk.img"): read, archive and compress, no hashing, no encryption, nothing written"
        [ "$WITH_IMAGE" != 1 ] || echo "- restore: kura writes holes for zero chunks; restic 0.14 has no sparse restore; borg extract without --sparse (default)"
        echo "- data set: $ds_name ($FILES_SRC$([ -n "$DATA_DIR" ] && echo ", chosen with --data/DATA_DIR"))"
        echo "- dataset files/: copy of $FILES_SRC: $DS_FILES_COUNT regular files ($DS_ENTRIES entries), $DS_FILES_BYTES bytes ($ds_mib MiB)"
        if [ "$WITH_IMAGE" = 1 ]; then
            echo "- dataset disk.img: ext4 from \`mkfs.ext4 -q -F -d\`, $IMAGE_BYTES bytes ($IMAGE_SIZE); $DS_IMG_FSUSED bytes used in the file system, $DS_IMG_ALLOC bytes allocated on the host; holds $DS_STAGED_COUNT files/links from ${BIN_SOURCES[*]} (cap $BIN_CAP_MB MiB) and $RANDOM_MB MiB of random data"
        else
            echo "- dataset disk.img: none (--no-image): only files/ is backed up and restored"
        fi
        echo "- incremental change: first 4 KiB of every 100th regular file overwritten (${#MOD_FILES[@]} files); $(image_change_desc)"
        if [ "$WITH_IMAGE" = 1 ]; then
            echo "- phase time = sum of the two commands (files, image); phase peak RSS = max of the two; repository size with \`du -sb\` after the incremental phase"
        else
            echo "- phase time = the one command (files); repository size with \`du -sb\` after the incremental phase"
        fi
        echo
        echo "| phase | tool | wall time (s) | peak RSS (MiB) |"
        echo "| --- | --- | ---: | ---: |"
        for phase in "${PHASES[@]}"; do
            for tool in $(tools_of "$phase"); do
                echo "| $phase | $(md_label "$tool") | $(fmt "${WALL[$tool.$phase]}" '%.2f') | $(fmt "${RSS[$tool.$phase]}" '%.1f') |"
            done
        done
        echo
        echo "Per command (medians over runs):"
        echo
        echo "| phase | target | tool | median wall (s) | median peak RSS (MiB) |"
        echo "| --- | --- | --- | ---: | ---: |"
        for phase in "${PHASES[@]}"; do
            for target in "${TARGETS[@]}"; do
                for tool in $(tools_of "$phase"); do
                    echo "| $phase | $target | $(md_label "$tool") | $(fmt "${CWALL[$tool.$phase.$target]}" '%.2f') | $(fmt "${CRSS[$tool.$phase.$target]}" '%.1f') |"
                done
            done
        done
        echo
        echo "| tool | repository size (MiB) |"
        echo "| --- | ---: |"
        for tool in "${TOOLS[@]}"; do echo "| $tool | $(fmt "${REPO[$tool]}" '%.1f') |"; done
        echo
        echo "| phase | kura/restic wall | kura/restic RSS | kura/borg wall | kura/borg RSS | kura / $(md_label "$REF") wall | target |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
        for phase in "${PHASES[@]}"; do
            local rw rr bw br tz="" tzc=""
            rw=$(ratio "${WALL[kura.$phase]}" "${WALL[restic.$phase]}")
            rr=$(ratio "${RSS[kura.$phase]}" "${RSS[restic.$phase]}")
            bw=$(ratio "${WALL[kura.$phase]}" "${WALL[borg.$phase]}")
            br=$(ratio "${RSS[kura.$phase]}" "${RSS[borg.$phase]}")
            if [ "$phase" = full ]; then
                tz=$ref_ratio
                tzc="; vs $(md_label "$REF") wall <= $REF_TARGET: $(target_check "$tz" "$REF_TARGET")"
            fi
            echo "| $phase | $rw | $rr | $bw | $br | $tz | vs restic wall <= ${WALL_TARGET[$phase]}: $(target_check "$rw" "${WALL_TARGET[$phase]}"); RSS <= 1: $(target_check "$rr" 1)$tzc |"
        done
        echo "| repository size | $(ratio "${REPO[kura]}" "${REPO[restic]}") | | $(ratio "${REPO[kura]}" "${REPO[borg]}") | | | |"
        echo
        echo "Raw numbers: \`raw.tsv\` (run, tool, phase, target, metric, value)."
    } >"$md"

    # Plain table on stdout.
    echo
    echo "== kura vs restic vs borg: medians of $RUNS run(s); cache policy: $CACHE; data: $ds_name ($DS_FILES_COUNT files, $ds_mib MiB)$([ "$WITH_IMAGE" = 1 ] || echo ", no image") =="
    printf '%-12s %-8s %10s %10s\n' phase tool wall_s rss_MiB
    for phase in "${PHASES[@]}"; do
        for tool in $(tools_of "$phase"); do
            printf '%-12s %-8s %10.2f %10.1f\n' "$phase" "$(label "$tool")" "${WALL[$tool.$phase]}" "${RSS[$tool.$phase]}"
        done
    done
    echo
    printf '%-12s %-7s %-8s %10s %10s\n' phase target tool wall_s rss_MiB
    for phase in "${PHASES[@]}"; do
        for target in "${TARGETS[@]}"; do
            for tool in $(tools_of "$phase"); do
                printf '%-12s %-7s %-8s %10.2f %10.1f\n' "$phase" "$target" "$(label "$tool")" \
                    "${CWALL[$tool.$phase.$target]}" "${CRSS[$tool.$phase.$target]}"
            done
        done
    done
    echo
    printf '%-12s %10s\n' tool repo_MiB
    for tool in "${TOOLS[@]}"; do printf '%-12s %10.1f\n' "$tool" "${REPO[$tool]}"; done
    echo
    printf '%-12s %12s %12s %12s %12s %12s\n' ratio k/restic_wall k/restic_rss k/borg_wall k/borg_rss k/tarzstd
    for phase in "${PHASES[@]}"; do
        printf '%-12s %12s %12s %12s %12s %12s\n' "$phase" \
            "$(ratio "${WALL[kura.$phase]}" "${WALL[restic.$phase]}")" \
            "$(ratio "${RSS[kura.$phase]}" "${RSS[restic.$phase]}")" \
            "$(ratio "${WALL[kura.$phase]}" "${WALL[borg.$phase]}")" \
            "$(ratio "${RSS[kura.$phase]}" "${RSS[borg.$phase]}")" \
            "$([ "$phase" = full ] && echo "$ref_ratio" || echo -)"
    done
    printf '%-12s %12s %12s %12s %12s %12s\n' repo_size "$(ratio "${REPO[kura]}" "${REPO[restic]}")" - \
        "$(ratio "${REPO[kura]}" "${REPO[borg]}")" - -
    echo
    echo "Goals (kura wall): full <= ${WALL_TARGET[full]} x restic: $(target_check "$(ratio "${WALL[kura.full]}" "${WALL[restic.full]}")" "${WALL_TARGET[full]}"); full <= $REF_TARGET x $REF_LABEL: $(target_check "$ref_ratio" "$REF_TARGET"); restore <= ${WALL_TARGET[restore]} x restic: $(target_check "$(ratio "${WALL[kura.restore]}" "${WALL[restic.restore]}")" "${WALL_TARGET[restore]}")"
    echo "Markdown report: $md"
    echo "Raw numbers:     $RAW"
}

# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

main() {
    parse_args "$@"
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
    [[ $RANDOM_MB =~ ^[0-9]+$ ]] || die "RANDOM_MB must be a number of MiB"
    case $NO_IMAGE in 0 | "") WITH_IMAGE=1 ;; 1) WITH_IMAGE=0 TARGETS=(files) ;; *) die "NO_IMAGE must be 0 or 1" ;; esac
    case $IMAGE_CHANGE in fs | scattered) ;; *) die "IMAGE_CHANGE must be fs or scattered" ;; esac
    # The data set copied as files/: --data DIR / DATA_DIR, else SRC_DIR.
    if [ -n "$DATA_DIR" ]; then
        [ -d "$DATA_DIR" ] || die "--data $DATA_DIR is not a directory"
        FILES_SRC=$DATA_DIR
    else
        [ -d "$SRC_DIR" ] || die "SRC_DIR=$SRC_DIR is not a directory"
        FILES_SRC=$SRC_DIR
    fi
    case $VERIFY in all | kura) ;; *) die "VERIFY must be all or kura" ;; esac
    # BENCH_DIR is deleted whole: refuse the obvious mistakes.
    local bench_abs src_abs
    bench_abs=$(readlink -m "$BENCH_DIR")
    case $bench_abs in
        / | /tmp | /home | /root | /usr | /var | "$(readlink -m "$REPO_ROOT")" | "$(readlink -m "${HOME:-/}")")
            die "refusing BENCH_DIR=$BENCH_DIR (it is deleted and recreated)" ;;
    esac
    # Nor may the data set and BENCH_DIR overlap (deleted with it, or copied into itself).
    src_abs=$(readlink -f "$FILES_SRC")
    case $src_abs/ in "$bench_abs"/*) die "the data set $FILES_SRC lies inside BENCH_DIR=$BENCH_DIR, which is deleted" ;; esac
    case $bench_abs/ in "$src_abs"/*) die "BENCH_DIR=$BENCH_DIR lies inside the data set $FILES_SRC (it would copy itself)" ;; esac
    local image_bytes image_mib
    image_bytes=$(numfmt --from=iec "$IMAGE_SIZE") || die "bad IMAGE_SIZE=$IMAGE_SIZE"
    image_mib=$((image_bytes / 1048576))
    if [ -z "${BIN_CAP_MB:-}" ]; then
        BIN_CAP_MB=$((image_mib / 2))
        [ "$BIN_CAP_MB" -le 1024 ] || BIN_CAP_MB=1024
    fi
    # The effective knobs, for the report's command line.
    RUN_ENV="SRC_DIR=$SRC_DIR${DATA_DIR:+ DATA_DIR=$DATA_DIR} NO_IMAGE=$((1 - WITH_IMAGE)) IMAGE_SIZE=$IMAGE_SIZE RANDOM_MB=$RANDOM_MB BIN_CAP_MB=$BIN_CAP_MB RUNS=$RUNS CACHE=$CACHE VERIFY=$VERIFY IMAGE_CHANGE=$IMAGE_CHANGE BENCH_DIR=$BENCH_DIR${KURA_BIN:+ KURA_BIN=$KURA_BIN}"

    # Before anything slow: without root, the default cold cache fails here.
    choose_cache_policy
    install_deps
    build_kura

    log "work directory $BENCH_DIR (recreated); cache policy: $CACHE"
    rm -rf "$BENCH_DIR"
    mkdir -p "$BENCH_DIR"
    DATA=$BENCH_DIR/data
    RAW=$BENCH_DIR/raw.tsv
    printf 'run\ttool\tphase\ttarget\tmetric\tvalue\n' >"$RAW"

    make_dataset
    if [ "$WITH_IMAGE" = 1 ]; then
        log "dataset: $DS_FILES_COUNT files, $DS_FILES_BYTES bytes; image $IMAGE_BYTES bytes, $DS_IMG_FSUSED used"
    else
        log "dataset: $DS_FILES_COUNT files, $DS_FILES_BYTES bytes; no image"
    fi

    # restic's repository format, for the report.
    local probe=$BENCH_DIR/restic-probe
    restic -r "$probe" -q --cache-dir "$BENCH_DIR/restic-probe-cache" init >/dev/null
    RESTIC_REPO_VERSION=$(restic -r "$probe" -q --no-cache cat config | jq -r .version)
    rm -rf "$probe" "$BENCH_DIR/restic-probe-cache"

    local run
    for ((run = 1; run <= RUNS; run++)); do one_run "$run"; done
    rm -rf "$DATA"

    report
}

main "$@"
