//! Compiled conditions: a policy's condition turned once, at load time, into
//! a tree that a decision evaluates without Cedar's general evaluator.
//!
//! Cedar's evaluator rebuilds every set literal each time it meets one (a
//! sorted set of values), clones every value it reads (an attribute, the
//! principal), checks the stack at every step and wraps each value for
//! partial evaluation. A compiled condition builds its constant parts
//! (literals, set literals of literals, extension calls on literals such as
//! `duration("14d")`) once, and reads the request, the context and the
//! entities' attributes by reference.
//!
//! It answers only when it is sure: the condition evaluated to a boolean
//! without an error, by the same rules as Cedar, using Cedar's own functions
//! for comparisons, arithmetic, set tests, patterns and extension calls. Any
//! error, any value of an unexpected type, an entity or attribute that is
//! missing, or an expression it does not compile (template slots, unknowns)
//! gives [`Unsure`], and the policy is then evaluated by Cedar, which gives
//! the answer or the error with its message. So a compiled condition never
//! changes a decision; it only spares the general evaluator when nothing goes
//! wrong, which is almost always.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;

use cedar_policy_core::ast::ExtensionFunction;
use cedar_policy_core::ast::{
    BinaryOp, Context, Entity, EntityType, EntityUID, EntityUIDEntry, Expr, ExprKind, Literal,
    PartialValue, Pattern, Request, UnaryOp, Value, ValueKind, Var,
};
use cedar_policy_core::entities::{Dereference, Entities};
use cedar_policy_core::evaluator::{binary_arith, binary_relation, unary_app};
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

/// Deepest expression compiled; deeper ones are left to Cedar, whose
/// evaluator guards its own stack.
const MAX_DEPTH: usize = 48;

/// The compiled evaluator cannot tell; Cedar must evaluate the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsure;

type Result<T> = std::result::Result<T, Unsure>;

/// One compiled expression.
#[derive(Debug, Clone)]
enum Node {
    /// A value known at load time.
    Const(Value),
    Var(Var),
    /// `context.A`: read from the context's map by reference.
    ContextAttr(SmolStr),
    /// `context has A`.
    ContextHas(SmolStr),
    If(Box<[Node; 3]>),
    And(Box<[Node; 2]>),
    Or(Box<[Node; 2]>),
    Unary(UnaryOp, Box<Node>),
    Binary(BinaryOp, Box<[Node; 2]>),
    /// An extension function call with an argument known only at decision
    /// time (`.offset(...)`, `.lessThan(...)`).
    Call(&'static ExtensionFunction, Box<[Node]>),
    GetAttr(Box<Node>, SmolStr),
    HasAttr(Box<Node>, SmolStr),
    Like(Box<Node>, Pattern),
    Is(Box<Node>, EntityType),
    /// A set literal with some element known only at decision time.
    Set(Box<[Node]>),
    /// A record literal with some value known only at decision time.
    Record(Box<[(SmolStr, Node)]>),
}

/// A policy condition, compiled.
#[derive(Debug, Clone)]
pub struct Compiled(Arc<Node>);

impl Compiled {
    /// Compiles `condition` (a policy's scope and body joined, as
    /// `Policy::condition` builds it) for the slice of one action: the action
    /// scope test is left out, since the policy is evaluated only for an
    /// action its scope matches (a scope test never raises an error, so
    /// leaving a true one out changes nothing). `None` when some part cannot
    /// be compiled; Cedar then evaluates the policy every time.
    pub fn for_one_action(condition: &Expr) -> Option<Self> {
        let extensions = Extensions::all_available();
        // `principal-test && (action-test && rest)`.
        if let ExprKind::And { left, right } = condition.expr_kind() {
            if let ExprKind::And {
                left: action,
                right: rest,
            } = right.expr_kind()
            {
                if is_action_scope(action) {
                    let principal = compile(left, extensions, 0)?;
                    let rest = compile(rest, extensions, 0)?;
                    return Some(Self(Arc::new(Node::And(Box::new([principal, rest])))));
                }
            }
        }
        compile(condition, extensions, 0).map(|node| Self(Arc::new(node)))
    }

    /// Evaluates the condition with a decision's `bindings`: whether it is
    /// satisfied, or `Unsure` when Cedar must decide.
    pub fn satisfied(&self, bindings: &Bindings<'_>) -> Result<bool> {
        let satisfied = bindings.eval(&self.0).and_then(|value| as_bool(&value));
        if satisfied.is_err() {
            // Cedar's evaluator decides the policy: the count is not followed.
            bindings.lose_track();
        }
        satisfied
    }
}

/// Whether `expr` is an action scope test: `true` (no constraint),
/// `action == A`, `action in A` or `action in [A, ...]`, with entity
/// literals.
fn is_action_scope(expr: &Expr) -> bool {
    let ExprKind::BinaryApp {
        op: BinaryOp::Eq | BinaryOp::In,
        arg1,
        arg2,
    } = expr.expr_kind()
    else {
        return matches!(expr.expr_kind(), ExprKind::Lit(Literal::Bool(true)));
    };
    let entity = |expr: &Expr| matches!(expr.expr_kind(), ExprKind::Lit(Literal::EntityUID(_)));
    matches!(arg1.expr_kind(), ExprKind::Var(Var::Action))
        && match arg2.expr_kind() {
            ExprKind::Set(items) => items.iter().all(entity),
            _ => entity(arg2),
        }
}

fn compile(expr: &Expr, extensions: &'static Extensions<'static>, depth: usize) -> Option<Node> {
    if depth > MAX_DEPTH {
        return None;
    }
    let sub = |expr: &Expr| compile(expr, extensions, depth + 1);
    let node = match expr.expr_kind() {
        ExprKind::Lit(literal) => Node::Const(Value::new(literal.clone(), None)),
        ExprKind::Var(var) => Node::Var(*var),
        ExprKind::Slot(_) | ExprKind::Unknown(_) => return None,
        ExprKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => Node::If(Box::new([
            sub(test_expr)?,
            sub(then_expr)?,
            sub(else_expr)?,
        ])),
        ExprKind::And { left, right } => Node::And(Box::new([sub(left)?, sub(right)?])),
        ExprKind::Or { left, right } => Node::Or(Box::new([sub(left)?, sub(right)?])),
        ExprKind::UnaryApp { op, arg } => {
            let arg = sub(arg)?;
            match arg {
                Node::Const(value) => match unary_app(*op, value, None) {
                    Ok(value) => Node::Const(value),
                    Err(_) => return None,
                },
                arg => Node::Unary(*op, Box::new(arg)),
            }
        }
        ExprKind::BinaryApp { op, arg1, arg2 } => {
            Node::Binary(*op, Box::new([sub(arg1)?, sub(arg2)?]))
        }
        ExprKind::ExtensionFunctionApp { fn_name, args } => {
            let function = extensions.func(fn_name).ok()?;
            let args: Vec<Node> = args.iter().map(sub).collect::<Option<_>>()?;
            match constants(&args) {
                Some(values) => match function.call(&values) {
                    Ok(PartialValue::Value(value)) => Node::Const(value),
                    _ => return None,
                },
                None => Node::Call(function, args.into_boxed_slice()),
            }
        }
        ExprKind::GetAttr { expr, attr } => match expr.expr_kind() {
            ExprKind::Var(Var::Context) => Node::ContextAttr(attr.clone()),
            _ => Node::GetAttr(Box::new(sub(expr)?), attr.clone()),
        },
        ExprKind::HasAttr { expr, attr } => match expr.expr_kind() {
            ExprKind::Var(Var::Context) => Node::ContextHas(attr.clone()),
            _ => Node::HasAttr(Box::new(sub(expr)?), attr.clone()),
        },
        ExprKind::Like { expr, pattern } => Node::Like(Box::new(sub(expr)?), pattern.clone()),
        ExprKind::Is { expr, entity_type } => Node::Is(Box::new(sub(expr)?), entity_type.clone()),
        ExprKind::Set(items) => {
            let items: Vec<Node> = items.iter().map(sub).collect::<Option<_>>()?;
            match constants(&items) {
                Some(values) => Node::Const(Value::set(values, None)),
                None => Node::Set(items.into_boxed_slice()),
            }
        }
        ExprKind::Record(fields) => {
            let fields: Vec<(SmolStr, Node)> = fields
                .iter()
                .map(|(name, value)| Some((name.clone(), sub(value)?)))
                .collect::<Option<_>>()?;
            Node::Record(fields.into_boxed_slice())
        }
        // `e has a.b.c` and anything newer: Cedar's evaluator.
        _ => return None,
    };
    Some(node)
}

/// The values of `nodes`, when every one is known at load time.
fn constants(nodes: &[Node]) -> Option<Vec<Value>> {
    nodes
        .iter()
        .map(|node| match node {
            Node::Const(value) => Some(value.clone()),
            _ => None,
        })
        .collect()
}

/// What one decision evaluates conditions against: the request's variables
/// as values (built once per decision) and the entities.
pub struct Bindings<'a> {
    entities: &'a Entities,
    principal: Option<Value>,
    action: Option<Value>,
    resource: Option<Value>,
    context: Option<&'a Arc<BTreeMap<SmolStr, Value>>>,
    extensions: &'static Extensions<'static>,
    /// The entities looked up so far (a decision reads the same few, the
    /// principal and its account, again and again): comparing uids is
    /// cheaper than hashing one for the entities' map.
    seen: RefCell<Vec<&'a Entity>>,
    /// Follows how the decision depends on a count in the context.
    probe: Option<CountProbe>,
}

/// Entities a decision's bindings remember.
const SEEN_MAX: usize = 8;

impl<'a> Bindings<'a> {
    /// The bindings of `request` over `entities`.
    pub fn new(request: &'a Request, entities: &'a Entities) -> Self {
        let uid = |entry: &EntityUIDEntry| match entry {
            EntityUIDEntry::Known { euid, .. } => Some(Value::new(
                ValueKind::Lit(Literal::EntityUID(Arc::clone(euid))),
                None,
            )),
            EntityUIDEntry::Unknown { .. } => None,
        };
        Self {
            entities,
            principal: uid(request.principal()),
            action: uid(request.action()),
            resource: uid(request.resource()),
            context: match request.context() {
                Some(Context::Value(values)) => Some(values),
                _ => None,
            },
            extensions: Extensions::all_available(),
            seen: RefCell::new(Vec::new()),
            probe: None,
        }
    }

    /// Follows how the conditions evaluated with these bindings depend on
    /// the count `context.<attr>.used` (see `CountProbe`).
    pub fn probing_count(mut self, attr: &str) -> Self {
        self.probe = Some(CountProbe::new(self.context(), attr));
        self
    }

    /// Notes that the decision was reached in a way the probe cannot follow
    /// (Cedar's evaluator decided a policy, or a whole-context read).
    pub fn lose_track(&self) {
        if let Some(probe) = &self.probe {
            probe.lose_track();
        }
    }

    /// The counts over which every condition evaluated so far gives the
    /// same answer, when the bindings probe a count and could follow it.
    pub fn count_range(&self) -> Option<CountRange> {
        self.probe.as_ref().and_then(CountProbe::range)
    }

    /// The context attribute `attr`, read whole (a guard's test).
    pub fn context_attr(&self, attr: &str) -> Option<&'a Value> {
        if self.probe.as_ref().is_some_and(|probe| probe.attr == attr) {
            self.lose_track();
        }
        self.context()?.get(attr)
    }

    /// The context's attributes, when the context is known.
    pub fn context(&self) -> Option<&'a BTreeMap<SmolStr, Value>> {
        self.context.map(|values| &**values)
    }

    /// The uid of the principal, action or resource, when known.
    pub fn uid(&self, var: Var) -> Option<&EntityUID> {
        let value = match var {
            Var::Principal => self.principal.as_ref(),
            Var::Action => self.action.as_ref(),
            Var::Resource => self.resource.as_ref(),
            Var::Context => None,
        }?;
        match value.value_kind() {
            ValueKind::Lit(Literal::EntityUID(uid)) => Some(uid),
            _ => None,
        }
    }

    /// The entity `uid`, as `Entities::entity` finds it.
    pub fn entity(&self, uid: &EntityUID) -> Dereference<'a, Entity> {
        if let Some(entity) = self.seen.borrow().iter().find(|entity| entity.uid() == uid) {
            return Dereference::Data(entity);
        }
        let found = self.entities.entity(uid);
        if let Dereference::Data(entity) = found {
            let mut seen = self.seen.borrow_mut();
            if seen.len() < SEEN_MAX {
                seen.push(entity);
            }
        }
        found
    }

    fn eval<'s>(&'s self, node: &'s Node) -> Result<Cow<'s, Value>> {
        Ok(match node {
            Node::Const(value) => Cow::Borrowed(value),
            Node::Var(var) => match var {
                Var::Principal => Cow::Borrowed(self.principal.as_ref().ok_or(Unsure)?),
                Var::Action => Cow::Borrowed(self.action.as_ref().ok_or(Unsure)?),
                Var::Resource => Cow::Borrowed(self.resource.as_ref().ok_or(Unsure)?),
                Var::Context => {
                    self.lose_track();
                    Cow::Owned(Value::record_arc(
                        Arc::clone(self.context.ok_or(Unsure)?),
                        None,
                    ))
                }
            },
            Node::ContextAttr(attr) => {
                if self.probe.as_ref().is_some_and(|probe| probe.attr == *attr) {
                    self.lose_track();
                }
                Cow::Borrowed(self.context.ok_or(Unsure)?.get(attr).ok_or(Unsure)?)
            }
            Node::ContextHas(attr) => {
                Cow::Owned(self.context.ok_or(Unsure)?.contains_key(attr).into())
            }
            Node::If(parts) => {
                let [test, then, otherwise] = parts.as_ref();
                if as_bool(&*self.eval(test)?)? {
                    self.eval(then)?
                } else {
                    self.eval(otherwise)?
                }
            }
            Node::And(parts) => {
                let [left, right] = parts.as_ref();
                let holds = as_bool(&*self.eval(left)?)? && as_bool(&*self.eval(right)?)?;
                Cow::Owned(holds.into())
            }
            Node::Or(parts) => {
                let [left, right] = parts.as_ref();
                let holds = as_bool(&*self.eval(left)?)? || as_bool(&*self.eval(right)?)?;
                Cow::Owned(holds.into())
            }
            Node::Unary(op, arg) => {
                let arg = self.eval(arg)?.into_owned();
                Cow::Owned(unary_app(*op, arg, None).map_err(|_| Unsure)?)
            }
            Node::Binary(op, args) => {
                let [left, right] = args.as_ref();
                if let Some(probe) = &self.probe {
                    if let Some(holds) = self.probed_comparison(probe, *op, left, right)? {
                        return Ok(Cow::Owned(holds.into()));
                    }
                }
                let left = self.eval(left)?;
                let right = self.eval(right)?;
                Cow::Owned(self.binary(*op, left, right)?)
            }
            Node::Call(function, args) => {
                let args: Vec<Value> = args
                    .iter()
                    .map(|arg| self.eval(arg).map(Cow::into_owned))
                    .collect::<Result<_>>()?;
                match function.call(&args) {
                    Ok(PartialValue::Value(value)) => Cow::Owned(value),
                    _ => return Err(Unsure),
                }
            }
            Node::GetAttr(expr, attr) if self.probed_record(expr).is_some() => {
                if CountProbe::varies(attr) {
                    self.lose_track();
                }
                let record = self.probed_record(expr).ok_or(Unsure)?;
                Cow::Borrowed(self.attr(record, attr)?)
            }
            Node::HasAttr(expr, attr) if self.probed_record(expr).is_some() => {
                let record = self.probed_record(expr).ok_or(Unsure)?;
                let ValueKind::Record(record) = record.value_kind() else {
                    return Err(Unsure);
                };
                Cow::Owned(record.contains_key(attr).into())
            }
            Node::GetAttr(expr, attr) => match self.eval(expr)? {
                Cow::Borrowed(value) => Cow::Borrowed(self.attr(value, attr)?),
                Cow::Owned(value) => Cow::Owned(self.attr(&value, attr)?.clone()),
            },
            Node::HasAttr(expr, attr) => {
                let has = match self.eval(expr)?.value_kind() {
                    ValueKind::Record(record) => record.contains_key(attr),
                    ValueKind::Lit(Literal::EntityUID(uid)) => match self.entity(uid) {
                        Dereference::Data(entity) => entity.get(attr).is_some(),
                        Dereference::NoSuchEntity => false,
                        Dereference::Residual(_) => return Err(Unsure),
                    },
                    _ => return Err(Unsure),
                };
                Cow::Owned(has.into())
            }
            Node::Like(expr, pattern) => match self.eval(expr)?.value_kind() {
                ValueKind::Lit(Literal::String(text)) => {
                    Cow::Owned(pattern.wildcard_match(text).into())
                }
                _ => return Err(Unsure),
            },
            Node::Is(expr, entity_type) => match self.eval(expr)?.value_kind() {
                ValueKind::Lit(Literal::EntityUID(uid)) => {
                    Cow::Owned((uid.entity_type() == entity_type).into())
                }
                _ => return Err(Unsure),
            },
            Node::Set(items) => {
                let values: Vec<Value> = items
                    .iter()
                    .map(|item| self.eval(item).map(Cow::into_owned))
                    .collect::<Result<_>>()?;
                Cow::Owned(Value::set(values, None))
            }
            Node::Record(fields) => {
                let mut values = BTreeMap::new();
                for (name, value) in fields.iter() {
                    values.insert(name.clone(), self.eval(value)?.into_owned());
                }
                Cow::Owned(Value::record_arc(Arc::new(values), None))
            }
        })
    }

    /// The probed record (`context.<attr>`) when `node` reads it.
    fn probed_record(&self, node: &Node) -> Option<&'a Value> {
        let probe = self.probe.as_ref()?;
        match node {
            Node::ContextAttr(attr) if *attr == probe.attr => self.context()?.get(attr),
            _ => None,
        }
    }

    /// `node` as `±count + offset`, when it is the count, `remaining`, or
    /// one of them plus or minus a number, negated. `None` for any other
    /// expression, which is then evaluated as usual (and loses track of
    /// the count if it reads it).
    fn affine(&self, probe: &CountProbe, node: &Node) -> Result<Option<Affine>> {
        let affine = match node {
            Node::GetAttr(record, attr) if self.probed_record(record).is_some() => {
                match attr.as_str() {
                    "used" => Affine { coef: 1, offset: 0 },
                    "remaining" => match probe.limit {
                        // `remaining` is `max(limit - used, 0)`.
                        Some(limit) if probe.used <= limit => {
                            probe.keep_down(i128::from(limit), true);
                            Affine {
                                coef: -1,
                                offset: i128::from(limit),
                            }
                        }
                        Some(limit) => {
                            probe.keep_up(i128::from(limit), true);
                            Affine { coef: 0, offset: 0 }
                        }
                        None => return Ok(None),
                    },
                    _ => return Ok(None),
                }
            }
            Node::Unary(UnaryOp::Neg, arg) => match self.affine(probe, arg)? {
                Some(arg) => Affine {
                    coef: -arg.coef,
                    offset: -arg.offset,
                },
                None => return Ok(None),
            },
            Node::Binary(op @ (BinaryOp::Add | BinaryOp::Sub), args) => {
                let [left, right] = args.as_ref();
                let sign = if *op == BinaryOp::Add { 1 } else { -1 };
                match (self.affine(probe, left)?, self.affine(probe, right)?) {
                    (None, None) => return Ok(None),
                    (Some(_), Some(_)) => {
                        // `count + count`: not followed.
                        self.lose_track();
                        return Ok(None);
                    }
                    (Some(left), None) => Affine {
                        coef: left.coef,
                        offset: left.offset + sign * i128::from(self.long(right)?),
                    },
                    (None, Some(right)) => Affine {
                        coef: sign * right.coef,
                        offset: i128::from(self.long(left)?) + sign * right.offset,
                    },
                }
            }
            _ => return Ok(None),
        };
        // Cedar's arithmetic fails on overflow: at the probed count the
        // value must fit, and the range keeps it fitting.
        probe.keep_fitting(affine)?;
        Ok(Some(affine))
    }

    /// The number `node` evaluates to.
    fn long(&self, node: &Node) -> Result<i64> {
        match self.eval(node)?.value_kind() {
            ValueKind::Lit(Literal::Long(value)) => Ok(*value),
            _ => Err(Unsure),
        }
    }

    /// A comparison with the count on one side (`used + requested > limit`):
    /// its answer at the probed count, narrowing the range to the counts
    /// where the answer is the same. `None` when the count is on neither
    /// side.
    fn probed_comparison(
        &self,
        probe: &CountProbe,
        op: BinaryOp,
        left: &Node,
        right: &Node,
    ) -> Result<Option<bool>> {
        if !matches!(op, BinaryOp::Less | BinaryOp::LessEq | BinaryOp::Eq) {
            return Ok(None);
        }
        let (counted, other, counted_on_left) =
            match (self.affine(probe, left)?, self.affine(probe, right)?) {
                (None, None) => return Ok(None),
                (Some(_), Some(_)) => {
                    self.lose_track();
                    return Ok(None);
                }
                (Some(affine), None) => (affine, right, true),
                (None, Some(affine)) => (affine, left, false),
            };
        let other = match self.eval(other)?.value_kind() {
            ValueKind::Lit(Literal::Long(value)) => i128::from(*value),
            // A number is never equal to a value of another type; Cedar
            // refuses to order them.
            _ if op == BinaryOp::Eq => return Ok(Some(false)),
            _ => return Err(Unsure),
        };
        // `left - right` as `sign * count + rest`.
        let (sign, rest) = if counted_on_left {
            (counted.coef, counted.offset - other)
        } else {
            (-counted.coef, other - counted.offset)
        };
        let difference = sign * i128::from(probe.used) + rest;
        let holds = match op {
            BinaryOp::Less => difference < 0,
            BinaryOp::LessEq => difference <= 0,
            _ => difference == 0,
        };
        // The counts where the comparison holds: `count <= t`, `count >= t`
        // or `count == t`.
        let highest = if op == BinaryOp::Less { -1 } else { 0 };
        match (op, sign) {
            (_, 0) => {}
            (BinaryOp::Eq, _) => probe.keep_point(-sign * rest, holds),
            (_, 1) => probe.keep_down(highest - rest, holds),
            _ => probe.keep_up(rest - highest, holds),
        }
        Ok(Some(holds))
    }

    /// `value.attr` of a record or an entity.
    fn attr<'s>(&'s self, value: &'s Value, attr: &str) -> Result<&'s Value> {
        let found = match value.value_kind() {
            ValueKind::Record(record) => record.get(attr),
            ValueKind::Lit(Literal::EntityUID(uid)) => match self.entity(uid) {
                Dereference::Data(entity) => match entity.get(attr) {
                    Some(PartialValue::Value(value)) => Some(value),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        found.ok_or(Unsure)
    }

    fn binary(&self, op: BinaryOp, left: Cow<'_, Value>, right: Cow<'_, Value>) -> Result<Value> {
        let boolean = |holds: bool| Ok(Value::from(holds));
        match op {
            BinaryOp::Eq | BinaryOp::Less | BinaryOp::LessEq => {
                binary_relation(op, &left, &right, self.extensions).map_err(|_| Unsure)
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
                binary_arith(op, left.into_owned(), right.into_owned(), None).map_err(|_| Unsure)
            }
            BinaryOp::In => {
                let ValueKind::Lit(Literal::EntityUID(uid)) = left.value_kind() else {
                    return Err(Unsure);
                };
                let entity = match self.entity(uid) {
                    Dereference::Data(entity) => Some(entity),
                    Dereference::NoSuchEntity => None,
                    Dereference::Residual(_) => return Err(Unsure),
                };
                let within = |other: &EntityUID| {
                    **uid == *other || entity.is_some_and(|entity| entity.is_descendant_of(other))
                };
                match right.value_kind() {
                    ValueKind::Lit(Literal::EntityUID(other)) => boolean(within(other)),
                    ValueKind::Set(set) => {
                        // Cedar refuses a set with anything but entities in
                        // it, even after a match.
                        let mut found = false;
                        for item in set.iter() {
                            let ValueKind::Lit(Literal::EntityUID(other)) = item.value_kind()
                            else {
                                return Err(Unsure);
                            };
                            found = found || within(other);
                        }
                        boolean(found)
                    }
                    _ => Err(Unsure),
                }
            }
            BinaryOp::Contains => match left.value_kind() {
                ValueKind::Set(set) => boolean(set.contains(&right)),
                _ => Err(Unsure),
            },
            BinaryOp::ContainsAll | BinaryOp::ContainsAny => {
                match (left.value_kind(), right.value_kind()) {
                    (ValueKind::Set(left), ValueKind::Set(right)) => {
                        boolean(if op == BinaryOp::ContainsAll {
                            right.is_subset(left)
                        } else {
                            !left.is_disjoint(right)
                        })
                    }
                    _ => Err(Unsure),
                }
            }
            BinaryOp::GetTag | BinaryOp::HasTag => {
                let (ValueKind::Lit(Literal::EntityUID(uid)), ValueKind::Lit(Literal::String(tag))) =
                    (left.value_kind(), right.value_kind())
                else {
                    return Err(Unsure);
                };
                let entity = match self.entity(uid) {
                    Dereference::Data(entity) => Some(entity),
                    Dereference::NoSuchEntity => None,
                    Dereference::Residual(_) => return Err(Unsure),
                };
                let tag = entity.and_then(|entity| entity.get_tag(tag));
                if op == BinaryOp::HasTag {
                    return boolean(tag.is_some());
                }
                match tag {
                    Some(PartialValue::Value(value)) => Ok(value.clone()),
                    _ => Err(Unsure),
                }
            }
        }
    }
}

/// Counts (inclusive) over which a decision gives the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRange {
    /// The lowest count, `i64::MIN` when unbounded.
    pub min: i64,
    /// The highest count, `i64::MAX` when unbounded.
    pub max: i64,
}

impl CountRange {
    /// Every count.
    pub const ALL: Self = Self {
        min: i64::MIN,
        max: i64::MAX,
    };

    /// Whether `count` lies in the range.
    pub fn contains(self, count: i64) -> bool {
        self.min <= count && count <= self.max
    }
}

/// Follows how a decision depends on one count: `context.<attr>.used`, with
/// `context.<attr>.remaining` as `max(limit - used, 0)` for the record's
/// `limit`.
///
/// The conditions are evaluated at the count in the context. Where the
/// count meets a number in a comparison (`used + requested > limit`,
/// `remaining < 10`), the comparison's answer holds for a range of counts
/// (`used <= limit - requested`), and the probe narrows its range to it.
/// When every comparison that read the count keeps its answer, every
/// condition evaluates the same way, so the decision is the same for every
/// count in the range. Any other use of the count (a set holding it, a
/// product, the whole context, a policy Cedar's evaluator decides) loses
/// track: there is then no range.
#[derive(Debug)]
struct CountProbe {
    attr: SmolStr,
    /// The count the conditions are evaluated at.
    used: i64,
    limit: Option<i64>,
    min: Cell<i128>,
    max: Cell<i128>,
    lost: Cell<bool>,
}

/// `coef * count + offset`.
#[derive(Debug, Clone, Copy)]
struct Affine {
    coef: i128,
    offset: i128,
}

impl CountProbe {
    fn new(context: Option<&BTreeMap<SmolStr, Value>>, attr: &str) -> Self {
        let long = |name: &str| match context?.get(attr)?.value_kind() {
            ValueKind::Record(record) => match record.get(name)?.value_kind() {
                ValueKind::Lit(Literal::Long(value)) => Some(*value),
                _ => None,
            },
            _ => None,
        };
        let used = long("used");
        Self {
            attr: attr.into(),
            used: used.unwrap_or(0),
            limit: long("limit"),
            min: Cell::new(i128::from(i64::MIN)),
            max: Cell::new(i128::from(i64::MAX)),
            lost: Cell::new(used.is_none()),
        }
    }

    /// Whether the record's attribute `attr` varies with the count.
    fn varies(attr: &str) -> bool {
        matches!(attr, "used" | "remaining")
    }

    fn lose_track(&self) {
        self.lost.set(true);
    }

    /// Keeps the counts where `count <= t` holds (`holds`) or fails.
    fn keep_down(&self, t: i128, holds: bool) {
        if holds {
            self.max.set(self.max.get().min(t));
        } else {
            self.min.set(self.min.get().max(t + 1));
        }
    }

    /// Keeps the counts where `count >= t` holds (`holds`) or fails.
    fn keep_up(&self, t: i128, holds: bool) {
        if holds {
            self.min.set(self.min.get().max(t));
        } else {
            self.max.set(self.max.get().min(t - 1));
        }
    }

    /// Keeps the counts where `count == t` holds (`holds`) or fails (on the
    /// side of `t` the probed count is on).
    fn keep_point(&self, t: i128, holds: bool) {
        if holds {
            self.keep_up(t, true);
            self.keep_down(t, true);
        } else if i128::from(self.used) < t {
            self.keep_down(t - 1, true);
        } else {
            self.keep_up(t + 1, true);
        }
    }

    /// Keeps the counts where `affine` fits a 64-bit number; [`Unsure`]
    /// when it does not at the probed count (Cedar reports the overflow).
    fn keep_fitting(&self, affine: Affine) -> Result<()> {
        let (low, high) = (i128::from(i64::MIN), i128::from(i64::MAX));
        let value = affine.coef * i128::from(self.used) + affine.offset;
        if value < low || value > high {
            return Err(Unsure);
        }
        match affine.coef {
            1 => {
                self.keep_up(low - affine.offset, true);
                self.keep_down(high - affine.offset, true);
            }
            -1 => {
                self.keep_up(affine.offset - high, true);
                self.keep_down(affine.offset - low, true);
            }
            _ => {}
        }
        Ok(())
    }

    fn range(&self) -> Option<CountRange> {
        if self.lost.get() {
            return None;
        }
        let clamp = |value: i128| {
            i64::try_from(value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)))
                .unwrap_or_default()
        };
        Some(CountRange {
            min: clamp(self.min.get()),
            max: clamp(self.max.get()),
        })
    }
}

fn as_bool(value: &Value) -> Result<bool> {
    match value.value_kind() {
        ValueKind::Lit(Literal::Bool(holds)) => Ok(*holds),
        _ => Err(Unsure),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    /// The test entities, a request of `User::"alice"` for `Action::"use"`
    /// on `Doc::"d"` with `context`, and `policy` parsed.
    fn parts(
        policy: &str,
        context: serde_json::Value,
    ) -> (
        cedar_policy::Entities,
        cedar_policy::Request,
        cedar_policy::Policy,
    ) {
        let entities = cedar_policy::Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "User", "id": "alice"}, "attrs": {
                    "age": 40, "team": {"__entity": {"type": "Team", "id": "a"}},
                    "tags": ["x", "y"], "since": {"__extn": {"fn": "datetime", "arg": "2026-01-01"}}
                }, "parents": [{"type": "Team", "id": "a"}]},
                {"uid": {"type": "Team", "id": "a"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "alice"}}}, "parents": []}
            ]),
            None,
        )
        .unwrap();
        let request = cedar_policy::Request::new(
            r#"User::"alice""#.parse().unwrap(),
            r#"Action::"use""#.parse().unwrap(),
            r#"Doc::"d""#.parse().unwrap(),
            cedar_policy::Context::from_json_value(context, None).unwrap(),
            None,
        )
        .unwrap();
        (entities, request, policy.parse().unwrap())
    }

    /// The compiled answer and Cedar's (its boolean or its error) for a
    /// policy of action `use` by `User::"alice"` on `Doc::"d"`.
    fn both(
        policy: &str,
        context: serde_json::Value,
    ) -> (Option<bool>, std::result::Result<bool, String>) {
        let (entities, request, policy) = parts(policy, context);
        let core: &cedar_policy_core::ast::Policy = policy.as_ref();
        let condition = core.condition();
        let core_request: &Request = request.as_ref();
        let core_entities: &Entities = entities.as_ref();
        let ours = Compiled::for_one_action(&condition).and_then(|compiled| {
            compiled
                .satisfied(&Bindings::new(core_request, core_entities))
                .ok()
        });
        let theirs = cedar_policy_core::evaluator::Evaluator::new(
            core_request.clone(),
            core_entities,
            Extensions::all_available(),
        )
        .interpret(&condition, core.env())
        .map_err(|error| error.to_string())
        .map(|value| as_bool(&value).expect("a boolean"));
        (ours, theirs)
    }

    #[track_caller]
    fn answers(policy: &str, context: serde_json::Value, expected: bool) {
        let (ours, theirs) = both(policy, context);
        assert_eq!(theirs, Ok(expected), "Cedar: {policy}");
        assert_eq!(ours, Some(expected), "compiled: {policy}");
    }

    #[track_caller]
    fn leaves_to_cedar(policy: &str, context: serde_json::Value) {
        let (ours, theirs) = both(policy, context);
        assert!(
            theirs.is_err(),
            "Cedar should report an error for {policy}: {theirs:?}"
        );
        assert_eq!(ours, None, "compiled answered where Cedar errs: {policy}");
    }

    #[test]
    fn answers_what_cedar_answers() {
        let context = serde_json::json!({"country": "BR", "n": 3, "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01"}}});
        answers(
            r#"permit(principal, action == Action::"use", resource);"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal in Team::"a", action, resource) when { principal.age >= 18 };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { resource.owner == principal && !(principal.team has nothing) };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { ["US", "CN"].contains(context.country) };"#,
            context.clone(),
            false,
        );
        answers(
            r#"permit(principal, action, resource) when { principal.tags.containsAny([context.country, "y"]) };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { context.now >= principal.since.offset(duration("30d")) };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { context has missing || context.n + 1 == 4 };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { if context.n > 2 then principal is User else false };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { principal in [Team::"a", Team::"b"] && "pdf-export" like "pdf-*" };"#,
            context.clone(),
            true,
        );
        answers(
            r#"permit(principal, action, resource) when { User::"nobody" has age };"#,
            context.clone(),
            false,
        );
        answers(
            r#"permit(principal, action, resource) unless { principal.age < 18 };"#,
            context,
            true,
        );
    }

    #[test]
    fn leaves_every_error_to_cedar() {
        let context = serde_json::json!({"country": "BR", "n": 9223372036854775807_i64});
        // A missing attribute, of the context and of an entity.
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { context.missing == 1 };"#,
            context.clone(),
        );
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { principal.missing == 1 };"#,
            context.clone(),
        );
        // An entity that does not exist.
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { User::"nobody".age > 1 };"#,
            context.clone(),
        );
        // Overflow.
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { context.n + 1 > 0 };"#,
            context.clone(),
        );
        // Type errors: a non-boolean operand, a set with a non-entity in
        // `in` (even after a match), `contains` on a string.
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { true && context.n };"#,
            context.clone(),
        );
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { principal in [Team::"a", [1]] };"#,
            context.clone(),
        );
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { context.country.contains("B") };"#,
            context.clone(),
        );
        // An extension call that fails at decision time.
        leaves_to_cedar(
            r#"permit(principal, action, resource) when { principal.since.offset(duration("9223372036854775807ms")) > principal.since };"#,
            context,
        );
    }

    #[test]
    fn short_circuits_as_cedar_does() {
        // The error on the right is never reached.
        answers(
            r#"permit(principal, action, resource) when { false && principal.missing };"#,
            serde_json::json!({}),
            false,
        );
        answers(
            r#"permit(principal, action, resource) when { true || principal.missing };"#,
            serde_json::json!({}),
            true,
        );
    }

    /// The usage record of a context at count `used` (limit 100, 5 asked).
    fn usage_context(used: i64) -> serde_json::Value {
        serde_json::json!({"usage": {
            "used": used, "requested": 5, "limit": 100, "remaining": 100_i64.saturating_sub(used).max(0)
        }})
    }

    /// The compiled answer at `used` and the range it reports.
    fn probed(policy: &str, used: i64) -> (Option<bool>, Option<CountRange>) {
        let (entities, request, policy) = parts(policy, usage_context(used));
        let core: &cedar_policy_core::ast::Policy = policy.as_ref();
        let compiled = Compiled::for_one_action(&core.condition()).expect("compiles");
        let bindings = Bindings::new(request.as_ref(), entities.as_ref()).probing_count("usage");
        let answer = compiled.satisfied(&bindings).ok();
        (answer, bindings.count_range())
    }

    /// Cedar's answer at `used`.
    fn cedar_at(policy: &str, used: i64) -> std::result::Result<bool, String> {
        both(policy, usage_context(used)).1
    }

    #[test]
    fn a_count_range_holds_the_answer_and_ends_where_it_changes() {
        let policies = [
            "context.usage.used + context.usage.requested > context.usage.limit",
            "context.usage.used < 0 || context.usage.requested < 0",
            "context.usage.remaining < 10",
            "context.usage.remaining == 0",
            "context.usage.used == 42",
            "context.usage.used != 42",
            "100 - context.usage.used >= context.usage.requested",
            "-context.usage.used < -5",
            "context.usage.used + 9223372036854775800 > 0",
            "context.usage.requested <= 5 && 80 <= context.usage.used",
            "context.usage.used == \"many\"",
        ];
        for condition in policies {
            let policy = format!("permit(principal, action, resource) when {{ {condition} }};");
            for used in [0, 5, 41, 42, 43, 80, 90, 95, 96, 100, 150] {
                let (answer, range) = probed(&policy, used);
                let expected = cedar_at(&policy, used);
                assert_eq!(
                    answer.ok_or(()),
                    expected.clone().map_err(|_| ()),
                    "{condition} at {used}"
                );
                if expected.is_err() {
                    // Cedar decides a policy that fails: nothing is followed.
                    assert_eq!(range, None, "{condition} at {used}");
                    continue;
                }
                let range = range.unwrap_or_else(|| panic!("no range: {condition} at {used}"));
                assert!(range.contains(used), "{condition} at {used}: {range:?}");
                // Inside, Cedar answers the same; just outside, it does not.
                let inside = [
                    range.min,
                    range.max,
                    used - 1,
                    used + 1,
                    range.min.saturating_add(1),
                    range.max.saturating_sub(1),
                ];
                for count in inside.into_iter().filter(|count| range.contains(*count)) {
                    {
                        assert_eq!(
                            cedar_at(&policy, count),
                            expected,
                            "{condition}: {used} -> {count} in {range:?}"
                        );
                    }
                }
                // Far out, where the test context's `remaining` saturates,
                // the range is cautious.
                let ends = [range.min.checked_sub(1), range.max.checked_add(1)];
                // A range through `remaining` ends at the limit, where
                // `remaining` stops falling, even when the answer goes on.
                let cautious =
                    condition.contains("remaining") && (range.max == 100 || range.min == 100);
                for outside in ends
                    .into_iter()
                    .flatten()
                    .filter(|count| count.unsigned_abs() < 1 << 62 && !cautious)
                {
                    assert_ne!(
                        cedar_at(&policy, outside),
                        expected,
                        "{condition}: {used} -> {outside} outside {range:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_uses_of_the_count_give_no_range() {
        for condition in [
            "[context.usage.used].contains(5)",
            "context.usage.used * 2 > 10",
            "context.usage.used + context.usage.used > 10",
            "context.usage == {used: 1, requested: 5, limit: 100, remaining: 99}",
            "context has usage && context.usage.missing > 1",
        ] {
            let policy = format!("permit(principal, action, resource) when {{ {condition} }};");
            let (_, range) = probed(&policy, 1);
            assert_eq!(range, None, "{condition}");
        }
        // Reading the rest of the record keeps track.
        let (answer, range) = probed(
            "permit(principal, action, resource) when { context.usage has used && context.usage.limit == 100 };",
            1,
        );
        assert_eq!(answer, Some(true));
        assert_eq!(
            range,
            Some(CountRange {
                min: i64::MIN,
                max: i64::MAX
            })
        );
    }

    /// A small deterministic generator (xorshift) for the random conditions.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn number(&mut self, depth: u32) -> String {
            let leaf = depth == 0 || self.below(3) == 0;
            if leaf {
                return match self.below(8) {
                    0 | 1 => "context.usage.used".to_string(),
                    2 => "context.usage.remaining".to_string(),
                    3 => "context.usage.requested".to_string(),
                    4 => "context.usage.limit".to_string(),
                    5 => [
                        "9223372036854775800",
                        "-9223372036854775800",
                        "4611686018427387904",
                    ][self.below(3) as usize]
                        .to_string(),
                    _ => (self.below(140) as i64 - 20).to_string(),
                };
            }
            match self.below(8) {
                0..=2 => format!("({} + {})", self.number(depth - 1), self.number(depth - 1)),
                3..=5 => format!("({} - {})", self.number(depth - 1), self.number(depth - 1)),
                6 => format!("(-{})", self.number(depth - 1)),
                _ => format!("({} * 2)", self.number(depth - 1)),
            }
        }

        fn condition(&mut self, depth: u32) -> String {
            if depth == 0 || self.below(3) == 0 {
                let op = ["<", "<=", ">", ">=", "==", "!="][self.below(6) as usize];
                return format!("{} {op} {}", self.number(2), self.number(2));
            }
            match self.below(4) {
                0 => format!(
                    "({} && {})",
                    self.condition(depth - 1),
                    self.condition(depth - 1)
                ),
                1 => format!(
                    "({} || {})",
                    self.condition(depth - 1),
                    self.condition(depth - 1)
                ),
                2 => format!("!({})", self.condition(depth - 1)),
                _ => format!(
                    "(if {} then {} else {})",
                    self.condition(depth - 1),
                    self.condition(depth - 1),
                    self.condition(depth - 1)
                ),
            }
        }
    }

    #[test]
    fn random_conditions_answer_as_cedar_does_at_every_count_of_their_range() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut ranges, mut counts_checked) = (0, 0);
        for _ in 0..200 {
            let condition = rng.condition(3);
            let policy = format!("permit(principal, action, resource) when {{ {condition} }};");
            for used in [0, 3, 50, 94, 95, 96, 99, 100, 101, 150] {
                let (answer, range) = probed(&policy, used);
                let expected = cedar_at(&policy, used);
                match (&expected, answer) {
                    (Ok(expected), Some(answer)) => {
                        assert_eq!(*expected, answer, "{condition} at {used}")
                    }
                    (Err(_), None) => {
                        assert_eq!(range, None, "{condition} at {used}");
                        continue;
                    }
                    (Ok(_), None) => continue,
                    (Err(error), Some(answer)) => {
                        panic!("{condition} at {used}: compiled {answer}, Cedar {error}")
                    }
                }
                let Some(range) = range else { continue };
                ranges += 1;
                assert!(range.contains(used), "{condition} at {used}: {range:?}");
                let near = |count: i64| count.clamp(range.min, range.max);
                let mut counts = vec![
                    range.min,
                    range.max,
                    near(used - 1),
                    near(used + 1),
                    near(used - 7),
                    near(used + 7),
                ];
                let low = range.min.max(-1_000);
                let high = range.max.min(1_000);
                if low <= high {
                    counts.push(low + rng.below((high - low) as u64 + 1) as i64);
                }
                for count in counts {
                    counts_checked += 1;
                    assert_eq!(
                        cedar_at(&policy, count),
                        expected,
                        "{condition}: decided at {used}, {count} in {range:?}"
                    );
                }
            }
        }
        // The generator must reach the interesting cases.
        assert!(ranges > 500, "only {ranges} ranges");
        assert!(counts_checked > 3_500, "only {counts_checked} counts");
    }
}
