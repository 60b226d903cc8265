#!/usr/bin/env bash
# Builds a single-layer OCI image without Docker (umoci) and imports it into
# the containerd of every node of the local cluster (namespace k8s.io), of
# the nodes named, or only writes the OCI archive.
#
#   load-image.sh [options] NAME:TAG [BINARY [EXTRA...]]
#
#   NAME:TAG           docker-style name; fast-sandbox/agent:dev is stored as
#                      docker.io/fast-sandbox/agent:dev
#   BINARY             host file copied to /usr/local/bin/<basename> (or
#                      SRC=DEST), the image entrypoint; its shared libraries
#                      (ldd) and the dynamic loader come along
#   EXTRA              more host files: PATH (same path in the image) or
#                      SRC=DEST; ELF files bring their libraries too
#
#   --archive-only OUT write the OCI archive to OUT and do not import
#   --archive OUT      keep the OCI archive at OUT as well as importing it
#   --busybox          add busybox-static as /bin/busybox with its applets as
#                      symlinks (/bin/sh, /bin/sleep, ...); cmd /bin/sh when no
#                      BINARY is given
#   --entrypoint PATH  entrypoint inside the image (default: the BINARY)
#   --cmd ARG          default arguments (repeatable)
#   --node NODE        import into this node only (name from `cluster.sh
#                      nodes`, or its number; repeatable); default: every node
#   --address SOCK     import into the containerd at SOCK instead (repeatable)
#   --namespace NS     containerd namespace (default: k8s.io)
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

archive_only="" keep_archive="" with_busybox=0 entrypoint="" ns="k8s.io"
cmd_args=() addresses=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --archive-only) archive_only="$2"; shift 2 ;;
    --archive) keep_archive="$2"; shift 2 ;;
    --busybox) with_busybox=1; shift ;;
    --entrypoint) entrypoint="$2"; shift 2 ;;
    --cmd) cmd_args+=("$2"); shift 2 ;;
    --address) addresses+=("$2"); shift 2 ;;
    --node) addresses+=("$(node_socket "$2")") || die "no node $2 (see cluster.sh nodes)"; shift 2 ;;
    --namespace) ns="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || die "usage: load-image.sh [options] NAME:TAG [BINARY [EXTRA...]]"
ref="$(normalize_image "$1")"; shift
[[ "$ref" != *@* ]] || die "digest references are not supported: $ref"
repo="${ref%:*}" tag="${ref##*:}"
for tool in umoci ldd tar; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y umoci)"; done

work="$(mktemp -d /tmp/fsb-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
layout="$work/layout" bundle="$work/bundle"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$bundle" >/dev/null
root="$bundle/rootfs"
mkdir -p "$root"/{bin,etc,tmp,usr/local/bin,proc,sys,dev}
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# add SRC DEST: copy a host file (following symlinks) and, for dynamic ELF
# files, every library ldd lists, at the path ldd lists it.
add() {
  local src="$1" dest="$2"
  [[ -e "$src" ]] || die "no such file: $src"
  mkdir -p "$root$(dirname "$dest")"
  cp -L --preserve=mode "$src" "$root$dest"
  if head -c4 "$src" | grep -q 'ELF' && ldd "$src" >/dev/null 2>&1; then
    local lib
    while read -r lib; do
      [[ -n "$lib" && -e "$lib" ]] || continue
      [[ -e "$root$lib" ]] && continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L --preserve=mode "$lib" "$root$lib"
    done < <(ldd "$src" | awk '/=>/ {print $3; next} /^[[:space:]]*\// {print $1}')
  fi
}
split() { # SPEC DEFAULT_DEST -> "src dest"
  if [[ "$1" == *=* ]]; then echo "${1%%=*} ${1#*=}"; else echo "$1 $2"; fi
}

if [[ $with_busybox == 1 ]]; then
  bb=/bin/busybox
  [[ -x $bb ]] || die "$bb is missing (apt-get install -y busybox-static)"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do
    [[ "$applet" == busybox || -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
  done
fi
if [[ $# -ge 1 ]]; then
  read -r src dest < <(split "$1" "/usr/local/bin/$(basename "${1%%=*}")")
  add "$src" "$dest"
  [[ -n "$entrypoint" ]] || entrypoint="$dest"
  shift
fi
for extra in "$@"; do
  read -r src dest < <(split "$extra" "$extra")
  add "$src" "$dest"
done
if [[ -z "$entrypoint" && ${#cmd_args[@]} -eq 0 && $with_busybox == 1 ]]; then cmd_args=(/bin/sh); fi

umoci repack --image "$layout:$tag" "$bundle" >/dev/null
cfg=(--os linux --architecture amd64 --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin)
[[ -n "$entrypoint" ]] && cfg+=(--config.entrypoint "$entrypoint")
for a in "${cmd_args[@]}"; do cfg+=(--config.cmd "$a"); done
umoci config --image "$layout:$tag" "${cfg[@]}"
umoci gc --layout "$layout"

archive="$work/image.tar"
tar -C "$layout" -cf "$archive" .
size="$(du -h "$archive" | cut -f1)"
if [[ -n "$archive_only" ]]; then
  mkdir -p "$(dirname "$archive_only")"; cp "$archive" "$archive_only"
  log "wrote OCI archive $archive_only ($size) for $ref (import with: ctr -n $ns images import --base-name $repo $archive_only)"
  exit 0
fi
[[ -n "$keep_archive" ]] && { mkdir -p "$(dirname "$keep_archive")"; cp "$archive" "$keep_archive"; }
if [[ ${#addresses[@]} -eq 0 ]]; then
  for ((i = 1; i <= NODE_COUNT; i++)); do addresses+=("$(node_socket "$i")"); done
fi
ctr="$(ctr_bin)"
for address in "${addresses[@]}"; do
  [[ -S "$address" ]] || die "containerd socket $address not found (is the cluster up?)"
  "$ctr" -a "$address" -n "$ns" images import --base-name "$repo" "$archive" >/dev/null
  # Capture the list first: with pipefail, `ctr ... | grep -q` fails whenever
  # grep finds the line before ctr finished writing (ctr dies of SIGPIPE).
  images="$("$ctr" -a "$address" -n "$ns" images ls -q)"
  grep -qxF "$ref" <<<"$images" || die "import of $ref into $address failed"
  log "imported $ref ($size) into containerd $address namespace $ns"
  # The CRI plugin keeps every image it saw by ID (sha256:<config>) and the
  # kubelet's image GC is off: drop the ID names no tagged name points to
  # any more (what this import replaced), so the space is collected.
  stale="$("$ctr" -a "$address" -n "$ns" images ls | awk 'NR > 1 {
      if ($1 ~ /^sha256:/) id[$1] = $3; else named[$3] = 1 }
    END { for (r in id) if (!(id[r] in named)) print r }')"
  if [[ -n "$stale" ]]; then
    "$ctr" -a "$address" -n "$ns" images rm $stale >/dev/null
    log "removed $(wc -w <<<"$stale") replaced image(s) from $address"
  fi
done
