#!/usr/bin/env node
// Runs a block of serialized filesystem operations below a root and prints each result (a
// value or the errno code) as JSON. Started as root, as a non-root user (setpriv), or as root
// with "euid": then it changes only its effective ids first (setgroups, setegid, seteuid), as
// test tools and set-id programs do. stdin: {"root", "euid"?: uid, "ops": [{op, a, b, ...}]}.
'use strict';
const fs = require('fs');
const path = require('path');
const native = require(path.join(__dirname, '../../native/build/Release/layerfs.node'));

const codes = require('os').constants.errno;
const byNumber = Object.fromEntries(Object.entries(codes).map(([k, v]) => [v, k]));
const sys = (r) => {
  if (typeof r === 'number' && r < 0) throw Object.assign(new Error(byNumber[-r]), { code: byNumber[-r] });
  return r;
};

const input = JSON.parse(fs.readFileSync(0, 'utf8'));
if (input.euid !== undefined) {
  process.setgroups([]);
  process.setegid(input.euid);
  process.seteuid(input.euid);
}
const at = (x) => path.join(input.root, x);

function run(o) {
  switch (o.op) {
    case 'write': return fs.writeFileSync(at(o.a), o.data, { mode: o.mode });
    case 'append': return fs.appendFileSync(at(o.a), o.data);
    case 'read': return fs.readFileSync(at(o.a), 'utf8');
    case 'create': return fs.closeSync(fs.openSync(at(o.a), 'wx', o.mode));
    case 'mkdir': return fs.mkdirSync(at(o.a), o.mode);
    case 'unlink': return fs.unlinkSync(at(o.a));
    case 'rmdir': return fs.rmdirSync(at(o.a));
    case 'rename': return fs.renameSync(at(o.a), at(o.b));
    case 'renameat2': return sys(native.renameat2(-100, at(o.a), -100, at(o.b), o.flags));
    case 'chmod': return fs.chmodSync(at(o.a), o.mode);
    case 'chown': return fs.lchownSync(at(o.a), o.uid, o.uid);
    case 'truncate': return fs.truncateSync(at(o.a), o.len);
    case 'symlink': return fs.symlinkSync(o.b, at(o.a));
    case 'link': return fs.linkSync(at(o.a), at(o.b));
    case 'readdir': return fs.readdirSync(at(o.a)).sort();
    case 'rm -r': return o.a ? fs.rmSync(at(o.a), { recursive: true }) : 'skip';
    case 'setxattr': return sys(native.setxattr(at(o.a), 'user.r', Buffer.from(o.data), 0, 0));
    case 'stat': {
      const s = fs.lstatSync(at(o.a));
      return `${s.mode.toString(8)} ${s.uid}:${s.gid} ${s.isDirectory() ? '-' : s.size}`;
    }
    default: throw new Error(`unknown op ${o.op}`);
  }
}

const out = input.ops.map((o) => {
  process.umask(o.umask);
  try {
    const v = run(o);
    return v === undefined ? 'ok' : v;
  } catch (e) {
    return e.code || String(e);
  }
});
process.stdout.write(JSON.stringify(out));
