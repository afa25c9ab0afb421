"""Operations: who may do what (roles), and, with the communications process, what people see
(the dashboard, metrics)."""
