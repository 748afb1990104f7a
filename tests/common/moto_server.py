"""moto_server with EBS's real block size.

moto reports BlockSize 512 for EBS snapshots; real EBS uses 524288 (512 KiB),
and i2kit refuses any other size. Everything else is moto as it is.
Usage: python3 moto_server.py -H 127.0.0.1 -p PORT
"""
import sys

from moto.ebs import models

_init = models.EBSSnapshot.__init__


def _init_512k(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.block_size = 524288


models.EBSSnapshot.__init__ = _init_512k

from moto.server import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
