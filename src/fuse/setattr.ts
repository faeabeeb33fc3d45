// SETATTR's size and times, as every mode applies them to its backing object: a size through the
// open handle's fd when the kernel names one (a file opened for writing stays truncatable after a
// chmod), else through a fresh O_WRONLY open; times as given, UTIME_NOW, or left (UTIME_OMIT).
import { native } from '../sys/native';
import { check } from '../sys/errors';
import { UTIME_NOW, UTIME_OMIT } from '../sys/constants';
import { SETATTR } from './ops';
import type { SetAttr } from './filesystem';

export function setSizeAndTimes(s: SetAttr, openWrite: () => number,
  utimens: (atime: number, atimeNs: number, mtime: number, mtimeNs: number) => number): void {
  const v = s.valid;
  if (v & SETATTR.SIZE) {
    const hfd = s.fh ? native.handleFd(s.fh) : -1;
    if (hfd >= 0) check(native.ftruncate(hfd, s.size));
    else {
      const fd = check(openWrite());
      const r = native.ftruncate(fd, s.size);
      native.close(fd);
      check(r);
    }
  }
  if (v & (SETATTR.ATIME | SETATTR.MTIME)) {
    const ans = v & SETATTR.ATIME_NOW ? UTIME_NOW : v & SETATTR.ATIME ? s.atimeNs : UTIME_OMIT;
    const mns = v & SETATTR.MTIME_NOW ? UTIME_NOW : v & SETATTR.MTIME ? s.mtimeNs : UTIME_OMIT;
    check(utimens(s.atime, ans, s.mtime, mns));
  }
}
