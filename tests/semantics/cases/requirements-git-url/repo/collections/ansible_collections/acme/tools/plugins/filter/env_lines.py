"""acme.tools.env_lines: a mapping as environment-file lines (KEY=value), keys upper-cased and sorted."""


def env_lines(settings):
    return "".join(f"{str(key).upper()}={value}\n" for key, value in sorted(settings.items()))


class FilterModule:
    def filters(self):
        return {"env_lines": env_lines}
