"""Test-only action: take on the facts it is given, as if gathered on a host of that OS.

Facts returned under `ansible_facts` by a task become real host facts, so `ansible_facts.*` and
`hostvars[h].ansible_facts` both see them (set_fact would make plain variables). An action plugin runs in the
controller, so no module process is started for it.
"""

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        facts = self._task.args["facts"]
        result["ansible_facts"] = {
            key if key.startswith("ansible_") else f"ansible_{key}": value for key, value in facts.items()
        }
        result["changed"] = False
        return result
