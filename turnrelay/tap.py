# -*- test-case-name: tests.test_tap -*-
"""
twistd wiring: C{twistd -n turnrelay [options]}.

The options are generated from L{turnrelay.config.SETTINGS}, so every setting
has one name on the command line and in the configuration file.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.python import usage

from turnrelay.config import SETTINGS, ConfigError, RelayConfig, buildConfig, loadConfigFile
from turnrelay.service import RelayService, makeRelayService


class Options(usage.Options):
    """
    The command line of C{twistd turnrelay}.

    @ivar config: the validated L{RelayConfig}, after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "A TURN relay (RFC 8656) and STUN server (RFC 8489).  Without options it "
        "listens on 127.0.0.1 port 3478 over UDP and TCP.  Settings may also come "
        "from a TOML file (--config); the command line overrides the file."
    )
    optParameters: List[List[Any]] = [
        ["config", "c", None, "Read settings from this TOML file (see conf/turnrelay.conf)."]
    ] + [[setting.name, None, None, setting.help] for setting in SETTINGS if not setting.repeatable]

    def __init__(self) -> None:
        super().__init__()
        self.repeated: Dict[str, List[str]] = {}
        self.config = RelayConfig()

    def postOptions(self) -> None:
        values: Dict[str, Any] = {}
        try:
            if self["config"] is not None:
                values.update(loadConfigFile(self["config"]))
            for setting in SETTINGS:
                if setting.repeatable:
                    if setting.name in self.repeated:
                        values[setting.name] = self.repeated[setting.name]
                elif self[setting.name] is not None:
                    values[setting.name] = self[setting.name]
            self.config = buildConfig(values)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _repeatable(name: str, help: str) -> Any:
    def opt(self: Options, value: str) -> None:
        self.repeated.setdefault(name, []).append(value)

    opt.__doc__ = help
    return opt


for _setting in SETTINGS:
    if _setting.repeatable:
        setattr(
            Options,
            "opt_" + _setting.name.replace("-", "_"),
            _repeatable(_setting.name, _setting.help),
        )


def makeService(options: Options, reactor: Optional[Any] = None) -> RelayService:
    """
    Build the relay twistd runs.

    @param reactor: for tests; twistd's global reactor by default.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    return makeRelayService(options.config, reactor)
