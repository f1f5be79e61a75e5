"""``kogpt2_serving.handler_service``: the Multi Model Server handler service, as images and
``default_service_handler`` name it. MMS takes the one class *defined* in this module (it
checks ``__module__``), so this is a subclass, not a re-export; the service is
:class:`kogpt2_serving.serving.handler_service.HandlerService`."""
from .serving import handler_service as _service


class HandlerService(_service.HandlerService):
    pass
