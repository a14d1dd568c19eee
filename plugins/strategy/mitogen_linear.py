"""Ansible's linear strategy run over Mitogen (the `mitogen` package, pinned in the toolchain lock): one persistent
Python interpreter per host instead of a new SSH command and module upload per task. A proxy, as Mitogen's own
plugin module is, so that its classes are loaded once under their real names."""

import ansible_mitogen.loaders
import ansible_mitogen.strategy

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    pass
