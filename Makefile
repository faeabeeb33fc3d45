# layerfs — `make demo` and `make test` work alone on a fresh Debian bookworm machine (as root):
# they install what is missing (Debian packages, npm packages, the native build) first.
SHELL := /bin/bash
# the container engines the tests run layerfs under (test/containers-*.test.ts)
ENGINE_PKGS := podman runc uidmap slirp4netns busybox-static docker.io
DEB_PKGS := fuse3 attr acl fuse-overlayfs fio e2fsprogs util-linux \
            thin-provisioning-tools python3 make g++ liburing-dev mergerfs unionfs-fuse sqlite3 xfsprogs btrfs-progs \
            $(ENGINE_PKGS)
NODE_STAMP := node_modules/.layerfs-npm-stamp
ADDON := native/build/Release/layerfs.node
CLI := dist/src/cli/layerfs.js
NATIVE_SRC := $(wildcard native/src/*.c native/src/*.h native/helper/*.c) native/binding.gyp
TS_SRC := $(shell find src bench -name '*.ts' 2>/dev/null) tsconfig.json

.PHONY: all deps debs build demo test bench install uninstall clean containers container-image

all: build

# Debian packages: only when one is missing (apt-get update once, then install). A policy-rc.d
# keeps the packages' services (docker.io's dockerd) from being started by the install.
debs:
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "layerfs: need root to install: $$missing" >&2; exit 1; fi; \
	  rcd=; if [ ! -e /usr/sbin/policy-rc.d ]; then rcd=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; rc=$$?; \
	  [ -n "$$rcd" ] && rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: debs $(NODE_STAMP)

$(ADDON): $(NATIVE_SRC) $(NODE_STAMP)
	npx node-gyp rebuild --silent --directory native

$(CLI): $(TS_SRC) $(NODE_STAMP)
	npx tsc -p tsconfig.json
	@touch $@

build: debs $(ADDON) $(CLI)

demo: build
	bash scripts/demo.sh

# The suite as root defaults to FUSE passthrough; every file but thin mode's runs again with it
# off (LAYERFS_PASSTHROUGH=off). vitest's summaries, then one plain closing line for both.
# The container engines run once, in the first pass: what they test is the engines' use of the
# mount program, not the transport.
NO_PASSTHROUGH_TESTS = $(filter-out test/thin-% test/containers-%,$(wildcard test/*.test.ts))
# the io_uring pass: everything but the pool tests (thin volumes' C data path is in thin-mount)
URING_TESTS = $(filter-out test/thin-pool% test/containers-%,$(wildcard test/*.test.ts))
test: build
	@rm -f .test-results.json .test-results-off.json .test-results-uring.json
	npx vitest run --reporter=default --reporter=json --outputFile=.test-results.json; rc=$$?; \
	echo "== again with passthrough off"; \
	LAYERFS_PASSTHROUGH=off npx vitest run $(NO_PASSTHROUGH_TESTS) --reporter=default --reporter=json --outputFile=.test-results-off.json; rc2=$$?; \
	echo "== again with FUSE over io_uring (passthrough off: data requests come through the ring too)"; \
	LAYERFS_URING=on LAYERFS_PASSTHROUGH=off scripts/with-uring.sh npx vitest run $(URING_TESTS) --reporter=default --reporter=json --outputFile=.test-results-uring.json; rc3=$$?; \
	node scripts/test-summary.js .test-results.json .test-results-off.json .test-results-uring.json; \
	[ $$rc = 0 ] && [ $$rc2 = 0 ] && [ $$rc3 = 0 ]

# the containers suite's Debian image comes from debootstrap (the engines, and mergerfs and
# unionfs-fuse the aufs tests and suite compare with, are in DEB_PKGS)
BENCH_DEBS := debootstrap
bench: build
	@$(MAKE) --no-print-directory debs DEB_PKGS="$(BENCH_DEBS)"
	node dist/bench/run.js $(BENCH_ARGS)

# layerfs and layerfs-overlay on PATH: links to the C mount helper, which serves background
# overlay mounts through the resident service and runs the Node CLI for everything else.
# mount(8) runs mount.fuse3 for -t fuse.layerfs-overlay, which runs `layerfs-overlay SOURCE MNT
# -o OPTS` (so fstab lines work too).
install: build
	install -d /usr/local/bin
	for b in layerfs layerfs-overlay layerfs-aufs; do ln -sfn "$(CURDIR)/native/build/Release/layerfs-helper" /usr/local/bin/$$b; done

# Container engines on layerfs (docker/README.md): podman for root by default;
# SETUP_ARGS="--user NAME" for a user's rootless store, "--docker" for Docker Engine.
containers: build
	bash docker/setup.sh $(SETUP_ARGS)

# An image with layerfs inside (docker/Containerfile), built by podman on a debootstrapped base.
container-image: build
	@$(MAKE) --no-print-directory debs DEB_PKGS="podman runc debootstrap"
	bash docker/image.sh $(IMAGE_TAG)

uninstall:
	rm -f /usr/local/bin/layerfs /usr/local/bin/layerfs-overlay /usr/local/bin/layerfs-aufs

clean:
	rm -rf dist native/build
