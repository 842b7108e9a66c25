"""The panel's create form: its fields checked, each error under its own field."""

from ._spec import InstanceSpec, InvalidSetting, check_name, parse_size

FIELDS = ("name", "image", "memory", "cpus", "pids", "disk")


def check_create_form(config, existing, name="", image="", memory="", cpus="", pids="",
                      disk=""):
    """``(spec, errors)`` for the form's texts; blank fields take the config's values.

    ``existing``: the instance names there are; ``errors`` maps a field to its message.
    """
    errors = {}
    name = (name or "").strip()
    if not name:
        errors["name"] = "an instance needs a name"
    else:
        try:
            check_name(name)
        except InvalidSetting as exc:
            errors["name"] = str(exc)
        else:
            if name in existing:
                errors["name"] = "an instance named %r exists already" % name
    # A blank field is None: the config's value.
    values = {"image": (image or "").strip() or None,
              "memory": (memory or "").strip() or None,
              "disk": (disk or "").strip() or None}
    cpus, pids = str(cpus or "").strip(), str(pids or "").strip()
    try:
        values["cpus"] = float(cpus) if cpus else None
    except ValueError:
        errors["cpus"] = "CPUs must be a number like 1 or 0.5, not %r" % cpus
    try:
        values["pids"] = int(pids) if pids else None
    except ValueError:
        errors["pids"] = "pids must be a whole number like 256, not %r" % pids
    for field in ("memory", "disk"):
        try:
            parse_size(values[field] or getattr(config, field), field)
        except InvalidSetting as exc:
            errors[field] = str(exc)
    if errors:
        return None, errors
    try:
        spec = InstanceSpec.from_config(config, **values).validate()
    except InvalidSetting as exc:  # limits out of range
        # A setting the form has no field for (network, say) is shown at the image.
        errors[exc.field if exc.field in FIELDS else "image"] = str(exc)
        return None, errors
    return spec, {}
