#!/usr/bin/python3
"""The image an archive holds, layer by layer: prints JSON, a list with one entry per layer, each
the tree the layers up to it make (whiteouts and opaque markers applied), {path: record}.
Reads docker-archive (manifest.json) and oci-archive (index.json) tars, layers plain or gzip.
Independent of layerfs's own tar code, so it can judge what layerfs wrote."""
import hashlib, io, json, sys, tarfile

def blobs(outer):
    names = outer.getnames()
    def read(n):
        return outer.extractfile(n).read()
    if 'manifest.json' in names or './manifest.json' in names:
        m = json.loads(read('manifest.json' if 'manifest.json' in names else './manifest.json'))
        return [read(l) for l in m[0]['Layers']]
    index = json.loads(read('index.json'))
    digest = index['manifests'][0]['digest'].split(':', 1)[1]
    manifest = json.loads(read('blobs/sha256/' + digest))
    return [read('blobs/sha256/' + l['digest'].split(':', 1)[1]) for l in manifest['layers']]

TYPES = {tarfile.REGTYPE: 'f', tarfile.AREGTYPE: 'f', tarfile.DIRTYPE: 'd', tarfile.SYMTYPE: 'l',
         tarfile.CHRTYPE: 'c', tarfile.BLKTYPE: 'b', tarfile.FIFOTYPE: 'p', tarfile.LNKTYPE: 'h'}

def clean(name):
    parts = [p for p in name.split('/') if p not in ('', '.')]
    return '/'.join(parts)

def apply(tree, layer):
    t = tarfile.open(fileobj=io.BytesIO(layer), mode='r:*', errors='surrogateescape')
    members = t.getmembers()
    # opaque markers first: they clear what lower layers had in the dir, not this layer's entries
    for m in members:
        n = clean(m.name)
        base = n.rsplit('/', 1)[-1]
        if base == '.wh..wh..opq':
            d = n[:-len(base)]
            for k in [k for k in tree if k.startswith(d) and k != d.rstrip('/')]:
                del tree[k]
    for m in members:
        n = clean(m.name)
        if not n:
            continue
        base = n.rsplit('/', 1)[-1]
        if base == '.wh..wh..opq':
            continue
        if base.startswith('.wh.'):
            gone = n[:len(n) - len(base)] + base[4:]
            for k in [k for k in tree if k == gone or k.startswith(gone + '/')]:
                del tree[k]
            continue
        kind = TYPES.get(m.type, '?')
        # not user.overlay.*: the kernel's rootless overlayfs (userxattr) keeps its own state
        # there, and containers-storage's native diff copies it into layers; it is no content
        xattrs = {k[len('SCHILY.xattr.'):]: v.encode('utf-8', 'surrogateescape').hex()
                  for k, v in sorted(m.pax_headers.items())
                  if k.startswith('SCHILY.xattr.') and not k.startswith('SCHILY.xattr.user.overlay.')}
        rec = {'type': kind, 'mode': oct(m.mode & 0o7777), 'uid': m.uid, 'gid': m.gid}
        if xattrs:
            rec['xattrs'] = xattrs
        if kind == 'f':
            rec['size'] = m.size
            rec['md5'] = hashlib.md5(t.extractfile(m).read()).hexdigest()
        elif kind == 'l':
            rec['target'] = m.linkname
        elif kind in ('c', 'b'):
            rec['dev'] = [m.devmajor, m.devminor]
        elif kind == 'h':
            rec = dict(tree.get(clean(m.linkname), {'type': 'dangling-link'}))
        if kind != 'd' and n in tree and tree[n]['type'] == 'd':
            for k in [k for k in tree if k.startswith(n + '/')]:
                del tree[k]
        tree[n] = rec
    return tree

def main():
    outer = tarfile.open(sys.argv[1], encoding='utf-8', errors='surrogateescape')
    tree, out = {}, []
    for layer in blobs(outer):
        tree = apply(tree, layer)
        out.append(dict(sorted(tree.items())))
    json.dump(out, sys.stdout)

main()
